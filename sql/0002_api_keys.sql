-- API keys: only the sha256 of each secret is stored; the key id is public.
-- A key's state is its latest row by updated_at (revocation inserts a new row); lookups
-- take argMax by updated_at, so they are exact before any merge and without FINAL.
CREATE TABLE IF NOT EXISTS {database:Identifier}.api_keys
(
    key_id          String,
    secret_sha256   FixedString(64),
    name            String,
    scopes          Array(LowCardinality(String)),
    team            Nullable(String),
    created_at      DateTime64(6, 'UTC'),
    revoked_at      Nullable(DateTime64(6, 'UTC')),
    updated_at      DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY key_id
