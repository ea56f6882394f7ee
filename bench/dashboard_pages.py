"""The dashboard's pages over 10 million events: every API call each page makes, timed.

Loads (or reuses, with --path) the same generated month as bench/chargeback_bench.py, then
serves the API in-process (FastAPI TestClient, auth disabled on loopback, no sink) and times
each page's calls as the browser makes them, plus the budget-spend queries directly (the
budgets endpoints read their policies from Kafka; here the policies are built in code and
the same query functions run against the warehouse). A page's figure is the sum of its
calls' medians: the browser sends them in parallel, so this is an upper bound. Not a test.

    .venv/bin/python -m bench.dashboard_pages [--events 10000000] [--runs 10] [--path DIR] [--keep] [--pages overview,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from agentledger.settings import Settings
from api.app import create_app
from api.budget_status import session_attribution_query, spend_query
from api.migrations import migrate
from api.warehouse.chdb import ChdbWarehouse
from bench.chargeback_bench import DATABASE, load, summary
from schemas.budgets import BudgetPolicy

RESULTS = Path(__file__).resolve().parent / "results" / "dashboard_pages.json"
MONTH = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
DAY = {"from": "2026-03-19T12:00:00Z", "to": "2026-03-20T12:00:00Z"}  # "last 24 h" at NOW
KILLED = 2_500  # sessions with a kill status, for the stopped-sessions list
# The Overview looks at April (about 4.9M events) against March (about 5.1M), to the same hour too.
OVERVIEW_MONTH = {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}
LAST_MONTH = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
LAST_MONTH_SAME_HOUR = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-20T12:00:00Z"}
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
SESSION = "sess-4242"
POLICIES = (
    BudgetPolicy(policy_id="team-month", scope=("team",), match={"team": "team-3"}, limit_cost="500",
                 window="calendar_month"),
    BudgetPolicy(policy_id="team-agent-7d", scope=("team", "agent_type"), limit_cost="50", window="rolling_7d"),
    BudgetPolicy(policy_id="session-tokens", scope=("session",), limit_tokens=200_000),
)  # fmt: skip


def pages(http: TestClient) -> dict[str, list[tuple[str, Callable[[], Any]]]]:
    def get(path: str, **params: Any) -> Callable[[], Any]:
        def call() -> Any:
            r = http.get(path, params=params)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            return r.content

        return call

    return {
        "overview": [
            ("chargeback day,team", get("/v1/chargeback", group_by="day,team", **OVERVIEW_MONTH)),
            ("chargeback team (last month)", get("/v1/chargeback", group_by="team", **LAST_MONTH)),
            ("chargeback team (last month, same hour)", get("/v1/chargeback", group_by="team", **LAST_MONTH_SAME_HOUR)),
            ("chargeback project", get("/v1/chargeback", group_by="project", **OVERVIEW_MONTH)),
            ("chargeback customer", get("/v1/chargeback", group_by="customer", **OVERVIEW_MONTH)),
            ("chargeback agent_type", get("/v1/chargeback", group_by="agent_type", **OVERVIEW_MONTH)),
            ("spend-by-model", get("/v1/reports/spend-by-model", **OVERVIEW_MONTH)),
            ("flagged", get("/v1/reports/flagged", **OVERVIEW_MONTH)),
        ],
        "chargeback": [
            ("chargeback team,project", get("/v1/chargeback", group_by="team,project", **MONTH)),
            ("csv team,project", get("/v1/chargeback", group_by="team,project", format="csv", **MONTH)),
            ("focus", get("/v1/chargeback", group_by="team,project", format="focus", **MONTH)),
        ],
        "sessions-list": [
            ("top sessions, last 24 h (the default)", get("/v1/reports/top-sessions", limit=100, **DAY)),
            (
                "top sessions of an agent type, 24 h",
                get("/v1/reports/top-sessions", agent_type="agent-3", limit=100, **DAY),
            ),
        ],
        "sessions-list-month": [
            (
                "top sessions of an agent type, month",
                get("/v1/reports/top-sessions", agent_type="agent-3", limit=100, **MONTH),
            ),
        ],
        "sessions-killed": [("killed sessions", get("/v1/sessions", state="killed", limit=100))],
        "sessions": [
            ("session status", get(f"/v1/sessions/{SESSION}")),
            ("session events", get(f"/v1/reports/sessions/{SESSION}")),
        ],
        "budgets": [("alerts", get("/v1/alerts", limit=100))],
    }


def direct(wh: ChdbWarehouse) -> dict[str, list[tuple[str, Callable[[], Any]]]]:
    def run(sql: str, params: dict[str, Any]) -> Callable[[], Any]:
        return lambda: wh.query(sql, params)

    budgets: list[tuple[str, Callable[[], Any]]] = []
    on_demand: list[tuple[str, Callable[[], Any]]] = []
    for policy in POLICIES:
        q = spend_query(DATABASE, policy, NOW, {}, limit=50)
        assert q is not None
        # A per-session policy's spend is read when the user asks (button), not on page load.
        (on_demand if "session" in policy.scope else budgets).append(
            (f"spend {policy.policy_id} ({q.source})", run(q.sql, q.params))
        )
    session_budgets = [("session attribution", run(*session_attribution_query(DATABASE, SESSION, None)))]
    for policy in POLICIES:
        # The scope values of a session of team-3 (what /v1/sessions/{id}/budgets asks each policy).
        within = {"session": {"session_id": SESSION}, "team": {"team": "team-3"}}.get(policy.scope[0], {})
        if policy.policy_id == "team-agent-7d":
            within = {"team": "team-3", "agent_type": "agent-3"}
        q = spend_query(DATABASE, policy, NOW, within, limit=1)
        assert q is not None
        session_budgets.append((f"session spend {policy.policy_id} ({q.source})", run(q.sql, q.params)))
    return {"budgets": budgets, "budgets-on-demand": on_demand, "sessions": session_budgets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=2_000_000)
    parser.add_argument("--path", type=Path, default=None, help="chDB folder (reused when it holds --events)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--pages", default="", help="comma-separated page names to time (default: all)")
    args = parser.parse_args()

    path = args.path or Path(tempfile.mkdtemp(prefix="agentledger-bench-"))
    wh = ChdbWarehouse(path)
    results: dict[str, dict[str, Any]] = {}
    try:
        migrate(wh, DATABASE)
        [row] = wh.query("SELECT count() AS n FROM {db:Identifier}.event_ledger", {"db": DATABASE})
        if row["n"] != args.events:
            for table in ("priced_events", "event_ledger", "rollup_hourly", "rollup_daily"):
                wh.command("TRUNCATE TABLE {db:Identifier}.{t:Identifier}", {"db": DATABASE, "t": table})
            print(f"loading {args.events:,} events into {path} ...", flush=True)
            load(wh, args.events, args.chunk)
        wh.command("TRUNCATE TABLE {db:Identifier}.session_status", {"db": DATABASE})
        wh.command(
            "INSERT INTO {db:Identifier}.session_status (session_id, state, signal_id, updated_at, signal, "
            "kafka_partition, kafka_offset) SELECT concat('sess-', toString(number * 100)), 'killed', NULL, "
            "toDateTime64('2026-03-15 00:00:00', 6, 'UTC'), '', 0, number FROM numbers({n:UInt32})",
            {"db": DATABASE, "n": KILLED},
        )
        settings = Settings(auth="disabled", api_host="127.0.0.1", database=DATABASE, chdb_path=path)
        with TestClient(create_app(settings, wh, with_sink=False)) as http:
            calls = pages(http)
            for page, extra in direct(wh).items():
                calls[page] = calls.get(page, []) + extra
            if args.pages:
                calls = {p: c for p, c in calls.items() if p in args.pages.split(",")}
            for page, page_calls in calls.items():
                results[page] = {}
                for name, call in page_calls:
                    call()  # warm-up
                    samples = []
                    for _ in range(args.runs):
                        started = time.perf_counter()
                        call()
                        samples.append((time.perf_counter() - started) * 1000)
                    results[page][name] = summary(samples)
                    print(f"  {page}: {name}: p50 {results[page][name]['p50_ms']} ms", flush=True)
    finally:
        wh.close()

    print(
        f"\n{args.events:,} events; Overview: April 2026 vs March, other pages: March; {args.runs} runs per call; load avg {os.getloadavg()}"
    )
    for page, page_calls in results.items():
        total = sum(r["p50_ms"] for r in page_calls.values())
        print(f"\n{page}: sum of p50 = {total:.0f} ms")
        for name, r in page_calls.items():
            print(f"  {name:<44}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}  ms p50 / p99")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "dashboard pages' API calls over 10M events",
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "events": args.events,
                "runs": args.runs,
                "load_average": os.getloadavg(),
                "pages": {
                    p: {"sum_p50_ms": round(sum(r["p50_ms"] for r in c.values()), 1), "calls": c}
                    for p, c in results.items()
                },
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
