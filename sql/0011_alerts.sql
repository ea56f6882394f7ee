-- Threshold alerts from the `alerts` topic (api/status_sink.py), one per alert_id once
-- merged; `team` is the team named in the scope value (NULL when the scope has no team),
-- so team keys read their own alerts with a bound filter. `alert_deliveries` holds each
-- webhook delivery attempt of the dispatcher, from the `alert-deliveries` topic.
CREATE TABLE IF NOT EXISTS {database:Identifier}.alerts
(
    alert_id            String,
    policy_id           String,
    scope               Array(LowCardinality(String)),
    scope_value         String,
    team                Nullable(String),
    window_start        Nullable(DateTime64(6, 'UTC')),
    threshold           Decimal(9, 6),
    spent_cost          Decimal(38, 12),
    spent_tokens        Int64,
    limit_cost          Nullable(Decimal(38, 12)),
    limit_tokens        Nullable(UInt64),
    top_sessions        String,
    issued_at           DateTime64(6, 'UTC'),
    kafka_partition     UInt32,
    kafka_offset        UInt64
)
ENGINE = ReplacingMergeTree(issued_at)
ORDER BY alert_id
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {database:Identifier}.alert_deliveries
(
    alert_id            String,
    policy_id           String,
    destination         String,
    format              LowCardinality(String),
    attempt             UInt32,
    attempted_at        DateTime64(6, 'UTC'),
    ok                  Bool,
    final               Bool,
    status_code         Nullable(UInt16),
    error               String,
    latency_ms          Float64,
    next_attempt_at     Nullable(DateTime64(6, 'UTC')),
    kafka_partition     UInt32,
    kafka_offset        UInt64
)
ENGINE = ReplacingMergeTree(attempted_at)
ORDER BY (alert_id, destination, attempt)
SETTINGS non_replicated_deduplication_window = 1000
