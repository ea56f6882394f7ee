"""What computing an opening balance costs a policy write, over a big warehouse (embedded chDB).

Loads events the way bench.chargeback_bench does (250,000 sessions, 20 teams, two months from
2026-03-01), then times api.opening_balance.compute_opening_balance for policies of each kind,
at 2026-03-20 12:00 UTC, and prints the time and what the balance kept (scope values, sessions,
bytes on the wire).

    .venv/bin/python -m bench.opening_balance_query [--events 2000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.migrations import migrate
from api.opening_balance import compute_opening_balance
from api.warehouse.chdb import ChdbWarehouse
from bench.chargeback_bench import DATABASE, load
from schemas.budgets import BudgetPolicy
from schemas.codec import encode

NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)
POLICIES: dict[str, dict[str, Any]] = {
    "team, calendar_month": {"scope": ["team"], "window": "calendar_month"},
    "team, calendar_day, Europe/Paris": {"scope": ["team"], "window": "calendar_day", "timezone": "Europe/Paris"},
    "team, rolling_24h": {"scope": ["team"], "window": "rolling_24h"},
    "team+agent_type, rolling_7d": {"scope": ["team", "agent_type"], "window": "rolling_7d"},
    "one team, calendar_month": {"scope": ["team"], "match": {"team": "team-3"}, "window": "calendar_month"},
    "session, lifetime": {"scope": ["session"], "window": "lifetime"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="agentledger-bench-opening-"))
    out: dict[str, Any] = {"events": args.events, "now": NOW.isoformat(), "policies": {}}
    wh = ChdbWarehouse(path / "chdb")
    try:
        migrate(wh, DATABASE)
        out["load_s"] = {k: round(v, 1) for k, v in load(wh, args.events, 1_000_000).items()}
        for name, fields in POLICIES.items():
            policy = BudgetPolicy.model_validate({"policy_id": "p", "limit_cost": "100", **fields})
            samples = []
            for _ in range(args.runs):
                started = time.perf_counter()
                balance = compute_opening_balance(wh, DATABASE, policy, NOW)
                samples.append((time.perf_counter() - started) * 1000)
            out["policies"][name] = {
                "p50_ms": round(statistics.median(samples), 1),
                "max_ms": round(max(samples), 1),
                "scopes": len(balance.scopes),
                "sessions": sum(len(s.sessions) for s in balance.scopes),
                "omitted_scopes": balance.omitted_scopes,
                "omitted_sessions": balance.omitted_sessions,
                "record_bytes": len(encode(balance)),
            }
    finally:
        wh.close()
        shutil.rmtree(path, ignore_errors=True)
    out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
