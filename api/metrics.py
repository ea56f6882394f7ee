"""Prometheus metrics of the API process and the sink, served at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SINK_ROWS = Counter("agentledger_sink_rows_inserted_total", "Priced events inserted into the warehouse")
SINK_BATCHES = Counter("agentledger_sink_batches_total", "Insert batches (one per partition chunk)")
SINK_DEAD_LETTERS = Counter("agentledger_sink_dead_letters_total", "Records sent to the dead-letter topic")
SINK_DUPLICATES = Counter(
    "agentledger_sink_duplicates_skipped_total", "Rows whose event_id was already in the ledger (not rolled up again)"
)
SINK_RETRIES = Counter("agentledger_sink_insert_retries_total", "Insert attempts that failed and were retried")
SINK_INSERT_SECONDS = Histogram(
    "agentledger_sink_insert_seconds",
    "Time of one warehouse insert",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SINK_LAG = Gauge("agentledger_sink_lag_messages", "High watermark minus committed offset", ["partition"])
HTTP_INGEST_EVENTS = Counter(
    "agentledger_http_ingest_events_total", "Events posted to POST /v1/events, by outcome", ["outcome"]
)
SIGNAL_STREAMS = Gauge("agentledger_signal_streams", "Open GET /v1/signals/stream connections")
SIGNALS_RELAYED = Counter("agentledger_signals_relayed_total", "Signals and statuses handed to signal streams")
