-- The ledger: one row per event_id, the first one the sink saw (a correction is a new event,
-- never an update in place). The sink looks up each batch's event_ids here and inserts only
-- the unseen ones, with the batch's deduplication token, so a duplicate that arrives a day
-- later, in another batch at other offsets, never reaches it. The summing rollups are fed
-- from this table's inserts by materialized views (0004, 0005): a view over priced_events
-- would count every duplicate row. Ordered by event_id for the sink's lookup; the bloom
-- filter serves per-session reports.
CREATE TABLE IF NOT EXISTS {database:Identifier}.event_ledger
(
    event_id            FixedString(32),
    kind                LowCardinality(String),
    occurred_at         DateTime64(6, 'UTC'),
    priced_at           DateTime64(6, 'UTC'),
    session_id          String,
    workflow_id         String,
    step                UInt32,
    step_name           String,
    agent_type          LowCardinality(String),
    team                LowCardinality(Nullable(String)),
    project             LowCardinality(Nullable(String)),
    customer            LowCardinality(Nullable(String)),
    provider            LowCardinality(Nullable(String)),
    model               LowCardinality(Nullable(String)),
    tool_name           LowCardinality(Nullable(String)),
    input_tokens        UInt64,
    output_tokens       UInt64,
    cache_read_tokens   UInt64,
    cache_write_tokens  UInt64,
    reasoning_tokens    UInt64,
    cost                Decimal(38, 12),
    list_cost           Decimal(38, 12),
    currency            LowCardinality(String),
    price_version       LowCardinality(String),
    unpriced            Bool,
    kafka_topic         LowCardinality(String),
    kafka_partition     UInt32,
    kafka_offset        UInt64,
    inserted_at         DateTime64(6, 'UTC') DEFAULT now64(6),
    INDEX session_bf session_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY event_id
SETTINGS non_replicated_deduplication_window = 1000;
