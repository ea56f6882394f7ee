"""The sink (api.sink.Sink) in a process of its own, for the pipeline benchmark.

Its own process so that its peak RSS (VmHWM) is the sink's and nothing else's, and so that
it does not share a GIL with the benchmark's readers. Configured by AGENTLEDGER_* like the
real one; writes one JSON file when `target` events are in the warehouse (priced_events,
event_ledger and both rollups: in every report), then keeps running until SIGTERM.

    python -m bench.sink_proc TARGET RESULT.json
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from agentledger.settings import Settings
from api.migrations import migrate
from api.sink import Sink
from api.warehouse import open_warehouse
from bench.common import vm_hwm_kib


def main() -> None:
    target, out = int(sys.argv[1]), Path(sys.argv[2])
    settings = Settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    warehouse = open_warehouse(settings)
    migrate(warehouse, settings.database)
    sink = Sink(settings, warehouse)
    ready_at = time.time()
    first: dict[str, float] = {}

    def watch() -> None:
        while not stop.is_set():
            if sink.rows_inserted and "first_insert" not in first:
                first["first_insert"] = time.time()
            # a block's ledger insert and rollups come after its raw insert: done once all three are
            if sink.rows_done >= target:
                done = time.time()
                db = {"db": settings.database}
                counts = {
                    t: warehouse.query(f"SELECT count() AS n FROM {{db:Identifier}}.{t}", db)[0]["n"]
                    for t in ("priced_events", "event_ledger")
                }
                [calls] = warehouse.query("SELECT sum(calls) AS n FROM {db:Identifier}.rollup_daily", db)
                out.write_text(
                    json.dumps(
                        {
                            "ready_at": ready_at,
                            "first_insert_at": first.get("first_insert"),
                            "done_at": done,
                            "rows_inserted": sink.rows_inserted,
                            "ledger_rows": sink.ledger_rows,
                            "batches": sink.batches,
                            "counts": counts,
                            "rollup_daily_calls": int(calls["n"] or 0),
                            "vm_hwm_kib": vm_hwm_kib(os.getpid()),
                        }
                    )
                )
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        sink.run(stop)
    finally:
        warehouse.close()


if __name__ == "__main__":
    main()
