"""What the sink's ledger lookup costs as the ledger grows.

For each block the sink asks the ledger which of the block's event ids it has seen
(`api.sink.LEDGER_LOOKUP`). The ledger is ordered by event id and ids are random, so the lookup
reads the id column of every granule. This loads N ledger rows (merged into one part) in a
migrated chDB folder in /tmp and times the lookup of 10,000 ids it has not seen, as a batch of new
events is: CPU of this process (chDB runs in it), min of 3.

    .venv/bin/python -m bench.ledger_lookup [--rows 200000 1000000 5000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from api.migrations import migrate
from api.sink import LEDGER_LOOKUP, lookup_ids
from api.warehouse.chdb import ChdbWarehouse
from bench.ledger_rollup import DB, _load

IDS = 10_000


def run(sizes: list[int]) -> list[dict[str, Any]]:
    wh = ChdbWarehouse(Path(tempfile.mkdtemp(prefix="agentledger-bench-lookup-")))
    try:
        migrate(wh, DB)
        out, done = [], 0
        for size in sorted(sizes):
            _load(wh, done, size - done, "'old'")
            done = size
            wh.command(f"OPTIMIZE TABLE {DB}.event_ledger FINAL")
            cpu = []
            for k in range(3):
                ids = sorted(hashlib.md5(f"new:{size}:{k}:{i}".encode()).hexdigest() for i in range(IDS))
                started = time.process_time()
                found = wh.query(LEDGER_LOOKUP, {"db": DB, "ids": lookup_ids(ids)})
                cpu.append(time.process_time() - started)
                assert not found, found[:3]
            best = min(cpu)
            out.append(
                {
                    "ledger_rows": size,
                    "lookup_ids": IDS,
                    "lookup_cpu_ms": round(best * 1e3, 1),
                    "cpu_us_per_event": round(best / IDS * 1e6, 1),
                }
            )
        return out
    finally:
        wh.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000, 5_000_000])
    args = parser.parse_args()
    print(json.dumps(run(args.rows), indent=2))


if __name__ == "__main__":
    main()
