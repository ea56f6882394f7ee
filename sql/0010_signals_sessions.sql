-- Signals sent to sessions and the latest status of each session, from the `signals` and
-- `session-status` topics (api/status_sink.py). A signal is idempotent by signal_id, and
-- one signal_id may reach many sessions (a team breach signals each of them): the row key
-- is (session_id, signal_id). Queries take argMax by issued_at / updated_at, so they are
-- exact before merges; the deduplication window makes the sink's insert tokens effective.
CREATE TABLE IF NOT EXISTS {database:Identifier}.signals
(
    session_id          String,
    signal_id           String,
    action              LowCardinality(String),
    policy_id           String,
    scope               Array(LowCardinality(String)),
    scope_value         String,
    window_start        Nullable(DateTime64(6, 'UTC')),
    limit_tokens        Nullable(UInt64),
    limit_cost          Nullable(Decimal(38, 12)),
    spent_tokens        Int64,
    spent_cost          Decimal(38, 12),
    reason              String,
    recommended_model   Nullable(String),
    trigger_event_id    Nullable(String),
    issued_at           DateTime64(6, 'UTC'),
    kafka_partition     UInt32,
    kafka_offset        UInt64
)
ENGINE = ReplacingMergeTree(issued_at)
ORDER BY (session_id, signal_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS {database:Identifier}.session_status
(
    session_id          String,
    state               LowCardinality(String),
    signal_id           Nullable(String),
    updated_at          DateTime64(6, 'UTC'),
    signal              String,
    kafka_partition     UInt32,
    kafka_offset        UInt64
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY session_id
SETTINGS non_replicated_deduplication_window = 1000
