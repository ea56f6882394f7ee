"""A month's chargeback grouped by team and project over 10 million events, embedded chDB.

Loads the events with INSERT ... SELECT FROM numbers() into `priced_events` (the raw table)
and into `event_ledger`, then rolls the ledger up into the hourly and daily rollups with the
sink's own statement (api.queries.rollup_insert). Then times the same report three ways in the same run:

- rollup: what GET /v1/chargeback runs for whole days (api.queries.report_query -> rollup_daily)
- ledger: the same grouping over the first-seen ledger (no dedupe needed)
- raw: the deduplicated raw table (api.queries.chargeback_query: argMax by event_id), the baseline

and checks that the three answers are identical to the last decimal. Prints a table and
writes bench/results/chargeback.json. Not a test.

    .venv/bin/python bench/chargeback_bench.py [--events 10000000] [--runs 30] [--path DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.migrations import migrate
from api.queries import LEDGER, ROLLUP_TIME_KEYS, chargeback_query, report_query, rollup_insert
from api.warehouse.chdb import ChdbWarehouse

DATABASE = "bench"
MONTH_START = datetime(2026, 3, 1, tzinfo=UTC)
MONTH_END = datetime(2026, 4, 1, tzinfo=UTC)
SPAN_S = 61 * 86400  # March and April: the report reads one month of two
RESULTS = Path(__file__).resolve().parent / "results" / "chargeback.json"

# One generated event per number n; the same expressions feed the raw table and the ledger.
_EVENT = {
    "event_id": "toFixedString(substring(hex(MD5(toString(number))), 1, 32), 32)",
    "kind": "if(number % 50 = 0, 'tool_call', 'llm_call')",
    "occurred_at": "toDateTime64('2026-03-01 00:00:00', 6, 'UTC') + toIntervalSecond((number * 7919) % {span})",
    "priced_at": "toDateTime64('2026-05-01 00:00:00', 6, 'UTC')",
    "session_id": "concat('sess-', toString(number % 250000))",
    "workflow_id": "concat('wf-', toString(number % 250000))",
    "step": "toUInt32(intDiv(number, 250000))",
    "step_name": "'llm'",
    # team, project, customer and agent type belong to the session (as in real traffic);
    # the model varies by call. About 1,200 attribute combinations x 9 models a day.
    "agent_type": "concat('agent-', toString((number % 250000) % 12))",
    "team": "if((number % 250000) % 97 = 0, NULL, concat('team-', toString((number % 250000) % 20)))",
    "project": "concat('project-', toString(((number % 250000) % 20) * 3 + intDiv((number % 250000), 20) % 3))",
    "customer": "if((number % 250000) % 3 = 0, NULL, concat('customer-', toString((number % 250000) % 400)))",
    "provider": "if(number % 50 = 0, NULL, ['openai', 'anthropic', 'google'][number % 9 % 3 + 1])",
    "model": "if(number % 50 = 0, NULL, concat('model-', toString(number % 9)))",
    "tool_name": "if(number % 50 = 0, 'web_search', NULL)",
    "input_tokens": "(number * 13) % 4000",
    "output_tokens": "(number * 7) % 900",
    "cache_read_tokens": "(number * 3) % 500",
    "cache_write_tokens": "0",
    "reasoning_tokens": "number % 64",
    "cost": "toDecimal128((number * 7919) % 1000000000, 12) / 100000000",
    "list_cost": "toDecimal128((number * 7919) % 1000000000, 12) / 90000000",
    "currency": "'USD'",
    "price_version": "'2026-03-01'",
    "unpriced": "false",
    "kafka_topic": "'agentledger.priced-events'",
    "kafka_partition": "toUInt32(number % 12)",
    "kafka_offset": "intDiv(number, 12)",
}
_RAW_ONLY = {"schema_version": "1", "input_cost": "0", "output_cost": "0", "price_source": "'genai-prices'"}


def _insert_select(table: str, columns: dict[str, str], first: int, count: int) -> str:
    names = ", ".join(columns)
    exprs = ", ".join(e.format(span=SPAN_S) for e in columns.values())
    return (
        f"INSERT INTO {{db:Identifier}}.{table} ({names}) "
        f"SELECT {exprs} FROM numbers({first}, {count}) SETTINGS max_insert_block_size = 1048576"
    )


def load(wh: ChdbWarehouse, events: int, chunk: int) -> dict[str, float]:
    timings = {}
    for table, columns in (("priced_events", {**_EVENT, **_RAW_ONLY}), ("event_ledger", _EVENT)):
        started = time.perf_counter()
        for first in range(0, events, chunk):
            wh.command(_insert_select(table, columns, first, min(chunk, events - first)), {"db": DATABASE})
        timings[table] = time.perf_counter() - started
    for table in ROLLUP_TIME_KEYS:
        started = time.perf_counter()
        wh.command(*rollup_insert(DATABASE, table, "", dedup_token=None))
        timings[table] = time.perf_counter() - started
    return timings


def timed(wh: ChdbWarehouse, sql: str, params: dict[str, Any], runs: int) -> tuple[list[float], list[dict[str, Any]]]:
    rows = wh.query(sql, params)  # warm-up, and the answer to compare
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        wh.query(sql, params)
        samples.append((time.perf_counter() - started) * 1000)
    return samples, rows


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": round(statistics.median(s), 2),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))], 2),
        "min_ms": round(s[0], 2),
        "max_ms": round(s[-1], 2),
        "mean_ms": round(statistics.fmean(s), 2),
    }


def _keyed(rows: list[dict[str, Any]]) -> dict[tuple[Any, Any], tuple[Any, ...]]:
    return {(r["team"], r["project"]): (r["cost"], r["list_cost"], r["input_tokens"], r["calls"]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--chunk", type=int, default=2_000_000, help="rows per INSERT ... SELECT")
    parser.add_argument("--path", type=Path, default=None, help="chDB folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the chDB folder")
    args = parser.parse_args()

    path = args.path or Path(tempfile.mkdtemp(prefix="agentledger-bench-"))
    wh = ChdbWarehouse(path)
    try:
        migrate(wh, DATABASE)
        [row] = wh.query("SELECT count() AS n FROM {db:Identifier}.event_ledger", {"db": DATABASE})
        load_s: dict[str, float] = {}
        if row["n"] != args.events:
            for table in ("priced_events", "event_ledger", "rollup_hourly", "rollup_daily"):
                wh.command("TRUNCATE TABLE {db:Identifier}.{t:Identifier}", {"db": DATABASE, "t": table})
            print(f"loading {args.events:,} events into {path} ...", flush=True)
            load_s = load(wh, args.events, args.chunk)
        counts = {
            t: wh.query("SELECT count() AS n FROM {db:Identifier}.{t:Identifier}", {"db": DATABASE, "t": t})[0]["n"]
            for t in ("priced_events", "event_ledger", "rollup_hourly", "rollup_daily")
        }
        parts = wh.query(
            "SELECT table, count() AS parts FROM system.parts WHERE database = {db:String} AND active GROUP BY table",
            {"db": DATABASE},
        )

        group_by = ("team", "project")
        rollup_sql, rollup_params, source = report_query(DATABASE, group_by, MONTH_START, MONTH_END)
        assert source == "rollup_daily", source
        ledger_sql, ledger_params, _ = report_query(DATABASE, group_by, MONTH_START, MONTH_END, source=LEDGER)
        raw_sql, raw_params = chargeback_query(DATABASE, group_by, MONTH_START, MONTH_END)

        results = {}
        answers = {}
        for name, sql, params in (
            ("rollup_daily", rollup_sql, rollup_params),
            ("ledger", ledger_sql, ledger_params),
            ("raw_dedup", raw_sql, raw_params),
        ):
            samples, rows = timed(wh, sql, params, args.runs)
            results[name] = summary(samples)
            answers[name] = _keyed(rows)
        identical = answers["rollup_daily"] == answers["ledger"] == answers["raw_dedup"]
        groups = len(answers["rollup_daily"])
        month_calls = sum(v[3] for v in answers["rollup_daily"].values())
    finally:
        wh.close()

    print()
    print(f"{args.events:,} events (March + April 2026), report: March, GROUP BY team, project -> {groups} groups")
    print(f"{month_calls:,} charged calls in the month; rows: {counts}")
    if load_s:
        print("load: " + ", ".join(f"{t} {s:.1f} s" for t, s in load_s.items()))
    print(f"{'source':<14}{'p50 ms':>10}{'p99 ms':>10}{'min ms':>10}{'max ms':>10}   ({args.runs} runs each)")
    for name, r in results.items():
        print(f"{name:<14}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['min_ms']:>10.2f}{r['max_ms']:>10.2f}")
    print(f"answers identical (every group, to 1e-12): {identical}")
    print(f"goal p50 < 100 ms through the rollups: {'met' if results['rollup_daily']['p50_ms'] < 100 else 'MISSED'}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "chargeback month GROUP BY team, project",
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "events": args.events,
                "runs": args.runs,
                "groups": groups,
                "month_calls": month_calls,
                "row_counts": counts,
                "active_parts": {p["table"]: p["parts"] for p in parts},
                "load_seconds": {k: round(v, 1) for k, v in load_s.items()},
                "results": results,
                "answers_identical": identical,
                "goal_p50_ms": 100,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
    if args.path is None and not args.keep:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
