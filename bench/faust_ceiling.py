"""What faust itself allows: the worker's events/s against the same worker doing less, same run.

Three variants of `python -m processors.worker` (exactly-once, as deployed), each over the
pipeline benchmark's N events, pre-produced to fresh topics:

- `bare`: the agent's batches (the intake, acks, transactions) with a handler that only
  parses each value with orjson: faust's consume path, the ceiling of any faust worker here;
- `send`: the same plus one priced-events record per event, sent as the worker sends (per source
  partition, in its transaction, delivery awaited per batch): the consume + produce ceiling;
- `full`: the worker's own `prepare_batch` (delivery awaited as the worker does).

The child times its own handler calls (first batch in to N events handled), so faust's commit
interval does not blur the rate; bench.pipeline measures the visible (committed) rate.

    .venv/bin/python -m bench.faust_ceiling [--events 30000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.common import Child, StageError, bench_settings, ensure_broker, loadavg
from bench.pipeline import TOKEN_CAP_NEVER_REACHED, make_events, produce_all

VARIANTS = ("bare", "send", "full")


def child(variant: str, n: int, out: Path) -> None:
    """The worker with its handler replaced (or timed) according to `variant`."""
    import logging

    import faust

    from agentledger.kafka_admin import ensure_topics
    from agentledger.settings import Settings
    from processors.app import LedgerApp, Outbox, put

    logging.basicConfig(level=logging.WARNING)
    settings = Settings()
    ensure_topics(settings)
    ledger = LedgerApp(settings)
    ledger.policies.start()
    seen = 0
    first = cpu_first = 0.0
    full = ledger.prepare_batch

    async def prepare(messages: Any) -> list[Any]:
        nonlocal seen, first, cpu_first
        if not first:
            first, cpu_first = time.perf_counter(), time.process_time()
        if variant == "full":
            futures = await full(messages)
        else:
            outbox: Outbox = {}
            for msg in messages:
                orjson.loads(msg.value)
                if variant == "send":
                    put(outbox, msg.partition, ledger.priced_name, msg.key, msg.value)
            futures = await ledger._append_outbox(outbox, ledger.source_name)
        seen += len(messages)
        if seen >= n and not out.exists():
            cpu = time.process_time() - cpu_first  # every thread of the worker
            out.write_text(json.dumps({"seconds": time.perf_counter() - first, "cpu_seconds": cpu, "events": seen}))
        return futures

    ledger.prepare_batch = prepare  # type: ignore[method-assign]
    worker = faust.Worker(ledger.app, loglevel="warning", quiet=True)
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        ledger.policies.stop()


def run_variant(bootstrap: str, variant: str, n: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    with bench_settings(bootstrap, tag, "c", session_token_cap=TOKEN_CAP_NEVER_REACHED) as settings:
        produce_all(settings, make_events(n))
        out = Path(f"/tmp/agentledger-bench-ceiling-{tag}.json")
        worker = Child(
            variant, [sys.executable, "-m", "bench.faust_ceiling", "--child", variant, str(n), str(out)], settings
        )
        try:
            deadline = time.monotonic() + max(180.0, n / 200)
            while not out.exists():
                if time.monotonic() > deadline:
                    raise StageError(f"{variant}: not done in time\n{worker.tail()}")
                worker.check_alive()
                time.sleep(0.05)
            result = json.loads(out.read_text())
        finally:
            worker.stop()
            out.unlink(missing_ok=True)
        worker.cleanup()
    return {
        "events_per_s": round(n / result["seconds"]),
        "seconds": round(result["seconds"], 2),
        "worker_cpu_us_per_event": round(result["cpu_seconds"] / n * 1e6),
        "loadavg": loadavg(),
    }


def run(bootstrap: str, n: int, variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    return {v: run_variant(bootstrap, v, n) for v in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--only", choices=VARIANTS, action="append", help="run only these variants")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "N", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, n, out = args.child
        child(variant, int(n), Path(out))
        return
    ensure_broker(args.bootstrap)
    print(json.dumps(run(args.bootstrap, args.events, tuple(args.only or VARIANTS)), indent=2))


if __name__ == "__main__":
    main()
