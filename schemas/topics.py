"""Every Kafka topic of the pipeline, declared once: name, partitions, retention, compaction.

Processes create the topics they use at start-up from this table (`ensure_topics` in
`agentledger.kafka_admin`), so a fresh cluster needs no manual set-up.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    suffix: str
    compacted: bool = False
    retention_ms: int = 7 * DAY_MS
    partitions: int | None = None
    """None: the cluster-wide default from settings (`AGENTLEDGER_PARTITIONS`)."""

    def config(self) -> dict[str, str]:
        if self.compacted:
            return {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
        return {"cleanup.policy": "delete", "retention.ms": str(self.retention_ms)}


COST_EVENTS = TopicSpec("cost-events", retention_ms=30 * DAY_MS)
"""Raw events from hooks and HTTP ingest; key: session id."""
COST_EVENTS_DLQ = TopicSpec("cost-events.dlq", retention_ms=90 * DAY_MS)
"""Events that failed validation or processing, with their reason; key: session id."""
PRICED_EVENTS = TopicSpec("priced-events", retention_ms=30 * DAY_MS)
"""Validated, deduplicated, priced events; key: session id."""
SIGNALS = TopicSpec("signals", retention_ms=7 * DAY_MS)
"""warn / downgrade / pause / kill for a session; key: session id."""
SESSION_STATUS = TopicSpec("session-status", compacted=True)
"""Latest status per session; key: session id."""
BUDGET_POLICIES = TopicSpec("budget-policies", compacted=True, partitions=1)
"""Budget policies; key: policy id; a tombstone deletes."""
ALERTS = TopicSpec("alerts", retention_ms=90 * DAY_MS)
"""Threshold crossings for owners; key: policy id."""
SCOPE_USAGE = TopicSpec("scope-usage", retention_ms=7 * DAY_MS)
"""Internal repartition: usage of budgets wider than a session, written by the worker that owns
the session and read by the one that owns the scope; key: scope value (`team=t1|agent_type=x`)."""
ALERT_DELIVERIES = TopicSpec("alert-deliveries", retention_ms=180 * DAY_MS)
"""Every webhook delivery attempt of the alert dispatcher; key: alert id. The dispatcher reads it
back at start-up to never deliver an alert twice to one destination, so it outlives `alerts`."""

ALL_TOPICS: tuple[TopicSpec, ...] = (
    COST_EVENTS,
    COST_EVENTS_DLQ,
    PRICED_EVENTS,
    SIGNALS,
    SESSION_STATUS,
    BUDGET_POLICIES,
    ALERTS,
    SCOPE_USAGE,
    ALERT_DELIVERIES,
)


def topic_name(prefix: str, spec: TopicSpec) -> str:
    return f"{prefix}{spec.suffix}"
