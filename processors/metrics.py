"""Prometheus counters of the stream processors."""

from __future__ import annotations

from prometheus_client import Counter

EVENTS_CONSUMED = Counter("agentledger_events_consumed", "Cost events read from cost-events")
EVENTS_PRICED = Counter("agentledger_events_priced", "Events priced and published to priced-events")
EVENTS_UNPRICED = Counter("agentledger_events_unpriced", "Events whose model had no price", ["policy"])
EVENTS_DEDUPLICATED = Counter("agentledger_events_deduplicated", "Events dropped as repeats of an event_id")
EVENTS_DEAD_LETTERED = Counter("agentledger_events_dead_lettered", "Events sent to cost-events.dlq", ["error_code"])
SIGNALS_SENT = Counter("agentledger_signals_sent", "Signals published to signals", ["action"])
THRESHOLDS_CROSSED = Counter("agentledger_thresholds_crossed", "Budget thresholds crossed below the limit")
EVENTS_CLAMPED = Counter("agentledger_events_clamped", "Events dated too far in the future, clamped to now")
EVENTS_LATE = Counter("agentledger_events_late", "Events older than the grace period (charged, flagged late)")
