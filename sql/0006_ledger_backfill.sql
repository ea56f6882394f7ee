-- Events stored before the ledger existed: the first-priced row of each event_id not yet in
-- the ledger (the views of 0004 and 0005 roll them up as they land). Idempotent: a second
-- run finds every event_id already there and inserts nothing.
INSERT INTO {database:Identifier}.event_ledger
(
    event_id, kind, occurred_at, priced_at, session_id, workflow_id, step, step_name, agent_type,
    team, project, customer, provider, model, tool_name,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
    cost, list_cost, currency, price_version, unpriced, kafka_topic, kafka_partition, kafka_offset
)
SELECT
    event_id, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10, r.11, r.12, r.13, r.14,
    r.15, r.16, r.17, r.18, r.19, r.20, r.21, r.22, r.23, r.24, r.25, r.26, r.27
FROM
(
    SELECT
        event_id,
        argMin(
            (kind, occurred_at, priced_at, session_id, workflow_id, step, step_name, agent_type,
             team, project, customer, provider, model, tool_name,
             input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
             cost, list_cost, currency, price_version, unpriced, kafka_topic, kafka_partition, kafka_offset),
            (kafka_offset, priced_at)
        ) AS r
    FROM {database:Identifier}.priced_events
    WHERE event_id NOT IN (SELECT event_id FROM {database:Identifier}.event_ledger)
    GROUP BY event_id
);
