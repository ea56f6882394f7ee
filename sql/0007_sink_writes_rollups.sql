-- The sink writes the rollups itself instead of through materialized views. A view's blocks are
-- written after its table's block, in the same INSERT but not atomically with it: a process
-- killed between the two left the ledger rows in place and the rollups short, and the replay
-- found every event already in the ledger and inserted nothing. Now each ledger insert carries
-- a `ledger_token`; the sink rolls those rows up with one INSERT ... SELECT per rollup under a
-- deduplication token, then records the token in `ledger_rollups`. A replay rolls up every
-- token of the chunk not yet recorded there (see api/sink.py), and nothing lands twice.
ALTER TABLE {database:Identifier}.event_ledger ADD COLUMN IF NOT EXISTS ledger_token String DEFAULT '';

CREATE TABLE IF NOT EXISTS {database:Identifier}.ledger_rollups
(
    ledger_token  String,
    rolled_at     DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY ledger_token;

DROP VIEW IF EXISTS {database:Identifier}.rollup_hourly_mv;

DROP VIEW IF EXISTS {database:Identifier}.rollup_daily_mv;
