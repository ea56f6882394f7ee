-- Raw priced events, one row per event_id once merged.
-- ReplacingMergeTree(priced_at) keeps the latest pricing of an event; reports never wait
-- for merges: they deduplicate by event_id in the query (argMax by priced_at), which
-- agrees with what merges will keep. non_replicated_deduplication_window makes the sink's
-- insert_deduplication_token effective, so a re-sent batch lands once.
CREATE TABLE IF NOT EXISTS {database:Identifier}.priced_events
(
    event_id            FixedString(32),
    schema_version      UInt8,
    kind                LowCardinality(String),
    occurred_at         DateTime64(6, 'UTC'),
    received_at         Nullable(DateTime64(6, 'UTC')),
    priced_at           DateTime64(6, 'UTC'),

    session_id          String,
    thread_id           Nullable(String),
    workflow_id         String,
    step                UInt32,
    step_name           String,
    agent_type          LowCardinality(String),
    team                LowCardinality(Nullable(String)),
    project             LowCardinality(Nullable(String)),
    customer            LowCardinality(Nullable(String)),
    tags                Map(LowCardinality(String), String),

    provider            LowCardinality(Nullable(String)),
    model               LowCardinality(Nullable(String)),
    input_tokens        UInt64,
    output_tokens       UInt64,
    cache_read_tokens   UInt64,
    cache_write_tokens  UInt64,
    reasoning_tokens    UInt64,
    latency_ms          Nullable(UInt64),
    streamed            Bool,
    cache_hit           Bool,

    tool_name           LowCardinality(Nullable(String)),
    duration_ms         Nullable(UInt64),
    tool_fee            Nullable(Decimal(38, 12)),
    error               Bool,

    max_output_tokens   Nullable(UInt64),
    estimated_cost      Nullable(Decimal(38, 12)),
    settles             Nullable(String),
    reported_cost       Nullable(Decimal(38, 12)),
    adjustment_amount   Nullable(Decimal(38, 12)),
    reason              Nullable(String),

    cost                Decimal(38, 12),
    list_cost           Decimal(38, 12),
    input_cost          Decimal(38, 12),
    output_cost         Decimal(38, 12),
    currency            LowCardinality(String),
    price_source        LowCardinality(String),
    price_version       LowCardinality(String),
    unpriced            Bool,
    late                Bool,
    clamped             Bool,

    kafka_topic         LowCardinality(String),
    kafka_partition     UInt32,
    kafka_offset        UInt64,
    inserted_at         DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(priced_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (toDate(occurred_at), event_id)
SETTINGS non_replicated_deduplication_window = 1000
