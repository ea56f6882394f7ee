-- Closes of billing periods (calendar months, UTC). A close is never undone: plain
-- MergeTree, and the first close of a month (min closed_at) is the one that counts.
-- Which month an event is charged in follows from this table and the ledger's inserted_at
-- (see api/periods.py): nothing is rewritten when a month closes.
CREATE TABLE IF NOT EXISTS {database:Identifier}.period_closes
(
    period      Date,
    closed_at   DateTime64(6, 'UTC'),
    closed_by   String
)
ENGINE = MergeTree
ORDER BY period
