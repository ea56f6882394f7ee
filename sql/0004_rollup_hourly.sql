-- Hourly summing rollup over the report dimensions, fed by a materialized view from the
-- ledger's inserts (first-seen events only, so nothing in it is ever a duplicate).
-- Reports sum() it at query time: exact before any merge, no FINAL, no OPTIMIZE.
-- session_id is left out: nearly every session would be its own row (no reduction);
-- session reports read the ledger. Reservations (call_started) are estimates, not spend.
CREATE TABLE IF NOT EXISTS {database:Identifier}.rollup_hourly
(
    hour                DateTime('UTC'),
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
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, team, project, customer, agent_type, provider, model, tool_name, currency)
SETTINGS allow_nullable_key = 1, non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database:Identifier}.rollup_hourly_mv
TO {database:Identifier}.rollup_hourly AS
SELECT
    toStartOfHour(occurred_at) AS hour,
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
GROUP BY hour, team, project, customer, agent_type, provider, model, tool_name, currency;
