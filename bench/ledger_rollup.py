"""What one sink rollup read costs as the ledger grows, with and without sql/0013's index.

The sink rolls up each ledger insert by its `ledger_token` (api/queries.py, rollup_insert). The
ledger is ordered by event_id, so the token of the insert just made is in the newest part only;
this loads N ledger rows (merged into one part), inserts a fresh 10,000-row part under a new
token, and times `count()` of that token, min of 3, on a migrated chDB folder in /tmp: with the
bloom filter of sql/0013, and with it dropped.

    .venv/bin/python -m bench.ledger_rollup [--rows 1000000 5000000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from api.migrations import migrate
from api.warehouse.chdb import ChdbWarehouse

DB = "bench_ledger"
COLUMNS = (
    "event_id, kind, occurred_at, priced_at, session_id, workflow_id, step, step_name, agent_type, cost, "
    "list_cost, currency, price_version, kafka_topic, kafka_partition, kafka_offset, ledger_token"
)
CHUNK = 10_000


def _load(wh: ChdbWarehouse, start: int, n: int, token_sql: str) -> None:
    wh.command(
        f"INSERT INTO {DB}.event_ledger ({COLUMNS}) SELECT lower(substring(hex(sipHash128(number)), 1, 32)), 'llm_call', "
        f"now64(6), now64(6), 's', 'w', 0, 'x', 'a', 1, 1, 'USD', 'v', 'bench', 0, number, {token_sql} "
        f"FROM numbers({start}, {n})"
    )


def run(sizes: list[int], indexed: bool) -> list[dict[str, Any]]:
    wh = ChdbWarehouse(Path(tempfile.mkdtemp(prefix="agentledger-bench-ledger-")))
    try:
        migrate(wh, DB)
        if not indexed:
            wh.command(f"ALTER TABLE {DB}.event_ledger DROP INDEX IF EXISTS ledger_token_bf")
        out, done = [], 0
        for size in sorted(sizes):
            _load(wh, done, size - done, f"concat('old:', toString(intDiv(number, {CHUNK})))")
            done = size
            wh.command(f"OPTIMIZE TABLE {DB}.event_ledger FINAL")
            times = []
            for k in range(3):
                token = f"new:{size}:{k}"
                _load(wh, 10**12 + size + k * CHUNK, CHUNK, f"'{token}'")
                started = time.perf_counter()
                [row] = wh.query(f"SELECT count() AS n FROM {DB}.event_ledger WHERE ledger_token = '{token}'")
                times.append(time.perf_counter() - started)
                assert row["n"] == CHUNK, row
            out.append({"ledger_rows": size, "indexed": indexed, "fresh_token_read_ms": round(min(times) * 1e3, 1)})
        return out
    finally:
        wh.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    args = parser.parse_args()
    print(json.dumps(run(args.rows, indexed=False) + run(args.rows, indexed=True), indent=2))


if __name__ == "__main__":
    main()
