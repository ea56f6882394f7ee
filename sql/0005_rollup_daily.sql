-- Daily summing rollup: the same as rollup_hourly (0004) by UTC day, for month and
-- week reports; a report whose period is not whole days reads the hourly one.
CREATE TABLE IF NOT EXISTS {database:Identifier}.rollup_daily
(
    day                 Date,
    team                LowCardinality(Nullable(String)),
    project             LowCardinality(Nullable(String)),
    customer            LowCardinality(Nullable(String)),
    agent_type          LowCardinality(String),
    provider            LowCardinality(Nullable(String)),
    model               LowCardinality(Nullable(String)),
    tool_name           LowCardinality(Nullable(String)),
    currency            LowCardinality(String),
    cost                Decimal(38, 12),
    list_cost           Decimal(38, 12),
    input_tokens        UInt64,
    output_tokens       UInt64,
    cache_read_tokens   UInt64,
    cache_write_tokens  UInt64,
    reasoning_tokens    UInt64,
    calls               UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, team, project, customer, agent_type, provider, model, tool_name, currency)
SETTINGS allow_nullable_key = 1, non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database:Identifier}.rollup_daily_mv
TO {database:Identifier}.rollup_daily AS
SELECT
    toDate(occurred_at) AS day,
    team, project, customer, agent_type, provider, model, tool_name, currency,
    sum(cost) AS cost,
    sum(list_cost) AS list_cost,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    count() AS calls
FROM {database:Identifier}.event_ledger
WHERE kind != 'call_started'
GROUP BY day, team, project, customer, agent_type, provider, model, tool_name, currency;
