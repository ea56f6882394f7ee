"""Opening balances, the pure parts: the window read, the queries as text, rows -> balance,
and the cap that keeps the record under the message size limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from api.budget_status import (
    opening_buckets_query,
    opening_scope_count_query,
    opening_sessions_query,
    opening_totals_query,
    opening_window,
)
from api.opening_balance import SESSIONS_PER_SCOPE, build_opening_balance
from processors.budget.windows import bucket_of
from schemas.budgets import BudgetPolicy, OpeningBalance, Window
from schemas.codec import encode

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 29, 15, 7, 30, tzinfo=UTC)  # the day Paris moves to summer time


def policy(**extra: Any) -> BudgetPolicy:
    fields: dict[str, Any] = {"policy_id": "p", "scope": ["team"], "limit_cost": "100"}
    fields.update(extra)
    return BudgetPolicy.model_validate(fields)


def row(team: str | None, cost: str, tokens: int = 10, **extra: Any) -> dict[str, Any]:
    return {
        "team": team,
        "cost": Decimal(cost),
        "input_tokens": tokens,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        **extra,
    }


@pytest.mark.parametrize(
    ("window", "zone", "start", "end"),
    [
        ("lifetime", "UTC", None, None),
        # a 23-hour day in Paris: 00:00 CET to 00:00 CEST
        ("calendar_day", "Europe/Paris", datetime(2026, 3, 28, 23, tzinfo=UTC), datetime(2026, 3, 29, 22, tzinfo=UTC)),
        ("calendar_week", "UTC", datetime(2026, 3, 23, tzinfo=UTC), datetime(2026, 3, 30, tzinfo=UTC)),
        ("calendar_month", "UTC", datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),
        ("rolling_1h", "UTC", datetime(2026, 3, 29, 14, 8, tzinfo=UTC), NOW + timedelta(hours=1)),
        ("rolling_24h", "UTC", datetime(2026, 3, 28, 15, 15, tzinfo=UTC), NOW + timedelta(hours=24)),
        ("rolling_30d", "UTC", datetime(2026, 2, 27, 18, tzinfo=UTC), NOW + timedelta(days=30)),
    ],
)
def test_the_window_read_is_the_workers(window, zone, start, end):
    assert opening_window(policy(window=window, timezone=zone), NOW) == (start, end)


def test_queries_are_bound_and_pick_their_tables():
    team = policy(match={"team": "ml'; DROP TABLE x"}, window="calendar_day")
    sql, params = opening_totals_query("db", team, NOW, limit=10)
    assert "ml'" not in sql and params["f0"] == "ml'; DROP TABLE x"
    assert "rollup_daily" in sql  # a whole UTC day
    sql, _ = opening_totals_query("db", policy(window="calendar_day", timezone="Europe/Paris"), NOW, limit=10)
    assert "rollup_hourly" in sql  # a Paris day: whole hours
    sql, _ = opening_totals_query("db", policy(window="calendar_day", timezone="Asia/Kolkata"), NOW, limit=10)
    assert "event_ledger" in sql  # starts at a half hour
    sql, params = opening_buckets_query("db", policy(window="rolling_7d"), NOW, top=5)
    assert "rollup_hourly" in sql and params["size"] == 3600 and params["top"] == 5
    sql, params = opening_buckets_query("db", policy(window="rolling_1h"), NOW, top=5)
    assert "event_ledger" in sql and "kind != 'call_started'" in sql and params["size"] == 60
    sql, params = opening_buckets_query("db", policy(window="rolling_7d", scope=["session"]), NOW, top=5)
    assert "event_ledger" in sql  # no session in the rollups
    sql, params = opening_sessions_query("db", policy(window="calendar_month"), NOW, top=7, per_scope=3)
    assert "LIMIT {per_scope:UInt32} BY team" in sql and (params["top"], params["per_scope"]) == (7, 3)


def test_rows_become_a_balance_biggest_first_without_unattributed_rows():
    p = policy(window="calendar_day")
    totals = [row("ml", "9.5", 900), row(None, "3"), row("web", "1.25", 100)]
    sessions = [
        row("ml", "6", 600, session_id="s1", scope_sessions=2),
        row("ml", "3.5", 300, session_id="s2", scope_sessions=2),
        row("web", "1.25", 100, session_id="w1", scope_sessions=1),
    ]
    as_of = NOW + timedelta(seconds=1)
    balance = build_opening_balance(p, NOW, as_of, totals, sessions=sessions)
    assert (balance.as_of, balance.window_start) == (as_of, datetime(2026, 3, 29, tzinfo=UTC))
    assert [(s.scope_value, s.cost, s.tokens) for s in balance.scopes] == [
        ("team=ml", Decimal("9.5"), 900),
        ("team=web", Decimal("1.25"), 100),
    ]
    assert balance.scopes[0].sessions == (("s1", 600, Decimal(6)), ("s2", 300, Decimal("3.5")))
    assert (balance.omitted_scopes, balance.omitted_sessions) == (0, 0)


def test_rolling_buckets_carry_the_workers_bucket_index():
    p = policy(window="rolling_24h")
    at = NOW - timedelta(minutes=40)
    index = int(at.timestamp()) // 900  # what the SQL computes: intDiv(toUnixTimestamp(occurred_at), 900)
    assert index == bucket_of(Window.ROLLING_24H, at)
    balance = build_opening_balance(p, NOW, NOW, [row("ml", "2")], buckets=[row("ml", "2", bucket=index)], sessions=[])
    assert balance.window_start is None and balance.scopes[0].buckets == ((index, 10, Decimal(2)),)


def test_the_record_stays_under_the_cap_keeping_the_biggest_spenders():
    p = policy(window="calendar_month")
    totals = [row(f"team-{i:04d}", str(1000 - i)) for i in range(400)]
    sessions = [
        row(f"team-{i:04d}", "1", session_id=f"session-{i:04d}-{j:03d}", scope_sessions=SESSIONS_PER_SCOPE + 20)
        for i in range(400)
        for j in range(SESSIONS_PER_SCOPE)
    ]
    balance = build_opening_balance(p, NOW, NOW, totals, sessions=sessions, max_bytes=200_000)
    assert len(encode(balance)) <= 200_000
    kept = len(balance.scopes)
    assert 0 < kept < 400 and [s.scope_value for s in balance.scopes] == [f"team={t['team']}" for t in totals[:kept]]
    assert balance.omitted_scopes == 400 - kept
    # 20 beyond each kept list, every session of an omitted scope value
    assert balance.omitted_sessions == kept * 20 + (400 - kept) * (SESSIONS_PER_SCOPE + 20)
    assert OpeningBalance.model_validate_json(encode(balance)) == balance


def test_a_rolling_scope_without_its_buckets_is_left_out():
    """Beyond the scope values whose buckets were read, a rolling budget cannot be seeded."""
    p = policy(window="rolling_1h")
    totals = [row("ml", "2"), row("web", "1")]
    buckets = [row("ml", "2", bucket=bucket_of(Window.ROLLING_1H, NOW))]
    balance = build_opening_balance(p, NOW, NOW, totals, buckets=buckets)
    assert [s.scope_value for s in balance.scopes] == ["team=ml"] and balance.omitted_scopes == 1


def test_scope_values_beyond_the_totals_read_are_counted_as_omitted():
    totals = [row(f"t{i}", "1") for i in range(3)]
    balance = build_opening_balance(policy(), NOW, NOW, totals, scope_count=250_000)
    assert (len(balance.scopes), balance.omitted_scopes) == (3, 249_997)
    sql, _ = opening_scope_count_query("db", policy(window="calendar_month"), NOW)
    assert sql.startswith("SELECT count() AS scopes FROM (SELECT team AS team") and "team IS NOT NULL" in sql
