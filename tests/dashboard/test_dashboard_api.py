"""The endpoints the dashboard added, over the same running API and data as the browser tests,
checked against plain Decimal sums over the events that went into the pipeline."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from processors.budget.windows import window_start
from schemas.budgets import Window
from schemas.events import EventKind, PricedEvent
from tests.dashboard.conftest import RUNAWAY, Dashboard, month_start

pytestmark = pytest.mark.integration


def in_month(dashboard: Dashboard, e: PricedEvent) -> bool:
    return month_start(dashboard.now) <= e.event.occurred_at < month_start(dashboard.now, -1)


def month(dashboard: Dashboard) -> dict[str, str]:
    return {
        "from": f"{month_start(dashboard.now):%Y-%m-%dT%H:%M:%SZ}",
        "to": f"{month_start(dashboard.now, -1):%Y-%m-%dT%H:%M:%SZ}",
    }


def test_key_me_names_the_key_its_scopes_and_team(dashboard: Dashboard) -> None:
    me = dashboard.get("/v1/keys/me", key="payments")
    assert (me["name"], me["team"], me["scopes"]) == ("payments lead", "payments", ["budgets:write", "reports:read"])
    assert dashboard.get("/v1/keys/me", key="admin")["team"] is None
    assert dashboard.http.get("/v1/keys/me").status_code == 401
    assert dashboard.http.get("/v1/keys/me", headers={"Authorization": "Bearer alk_nope"}).status_code == 401


@pytest.mark.parametrize("key", ["admin", "payments"])
def test_flagged_counts_unpriced_and_late_events_exactly(dashboard: Dashboard, key: str) -> None:
    events = [e for e in dashboard.events if in_month(dashboard, e)]
    if key == "payments":
        events = [e for e in events if e.event.team == "payments"]
    body = dashboard.get("/v1/reports/flagged", key=key, **month(dashboard))
    unpriced = [e for e in events if e.unpriced]
    late = [e for e in events if e.late]
    assert unpriced and late
    assert body["unpriced"] == {"events": len(unpriced), "cost": f"{sum((e.cost for e in unpriced), Decimal(0)):.12f}"}
    assert body["late"] == {"events": len(late), "cost": f"{sum((e.cost for e in late), Decimal(0)):.12f}"}
    assert body["clamped"] == {"events": 0, "cost": "0.000000000000"}


def test_flagged_refuses_another_teams_filter(dashboard: Dashboard) -> None:
    r = dashboard.http.get(
        "/v1/reports/flagged",
        params={"team": "search"},
        headers={"Authorization": f"Bearer {dashboard.keys['payments']}"},
    )
    assert r.status_code == 403


def test_budget_spend_is_the_settled_spend_of_each_scope_value_in_the_window(dashboard: Dashboard) -> None:
    body = dashboard.get("/v1/budgets/search-agents-7d/spend")
    start = window_start(Window.ROLLING_7D, datetime.fromisoformat(body["as_of"]))
    assert start is not None and body["window_start"] == start.isoformat().replace("+00:00", "Z")
    want: dict[str, tuple[Decimal, int]] = {}
    for e in dashboard.events:
        ev = e.event
        if ev.team == "search" and ev.occurred_at >= start and ev.kind is not EventKind.CALL_STARTED:
            cost, tokens = want.get(ev.agent_type, (Decimal(0), 0))
            want[ev.agent_type] = (cost + e.cost, tokens + ev.total_tokens)
    got = {s["group"]["agent_type"]: (Decimal(s["spent_cost"]), s["spent_tokens"]) for s in body["scopes"]}
    assert got == want
    researcher = next(s for s in body["scopes"] if s["group"]["agent_type"] == "researcher")
    assert researcher["scope_value"] == "team=search|agent_type=researcher"
    assert Decimal(researcher["fraction"]) == (want["researcher"][0] / Decimal("2.5")).quantize(Decimal("0.0001"))
    costs = [Decimal(s["spent_cost"]) for s in body["scopes"]]
    assert costs == sorted(costs, reverse=True)


def test_a_team_key_reads_only_its_budgets_spend(dashboard: Dashboard) -> None:
    headers = {"Authorization": f"Bearer {dashboard.keys['payments']}"}
    assert dashboard.http.get("/v1/budgets/search-agents-7d/spend", headers=headers).status_code == 404
    assert dashboard.http.get("/v1/budgets/session-tokens/spend", headers=headers).status_code == 404
    [row] = dashboard.get("/v1/budgets/payments-monthly/spend", key="payments")["scopes"]
    want = sum((e.cost for e in dashboard.events if in_month(dashboard, e) and e.event.team == "payments"), Decimal(0))
    assert Decimal(row["spent_cost"]) == want


def test_session_budgets_cover_the_session_with_its_own_scope_values(dashboard: Dashboard) -> None:
    body = dashboard.get(f"/v1/sessions/{RUNAWAY}/budgets")
    assert body["attribution"] == {
        "session": RUNAWAY, "agent_type": "researcher", "team": "search", "project": "ranking", "customer": "globex",
    }  # fmt: skip
    by_policy = {b["policy"]["policy_id"]: b for b in body["budgets"]}
    assert set(by_policy) == {"search-agents-7d", "session-tokens"}  # payments-monthly matches another team
    mine = [e for e in dashboard.events if e.event.session_id == RUNAWAY]
    tokens = by_policy["session-tokens"]
    assert tokens["scope_value"] == f"session={RUNAWAY}" and tokens["window_start"] is None
    assert tokens["spent_tokens"] == sum(e.event.total_tokens for e in mine)
    assert Decimal(tokens["spent_cost"]) == sum((e.cost for e in mine), Decimal(0))
    seven = by_policy["search-agents-7d"]
    start = datetime.fromisoformat(seven["window_start"])
    team_agent = [
        e for e in dashboard.events
        if e.event.team == "search" and e.event.agent_type == "researcher" and e.event.occurred_at >= start
    ]  # fmt: skip
    assert Decimal(seven["spent_cost"]) == sum((e.cost for e in team_agent), Decimal(0))
    # Another team's key: the session does not exist for it.
    r = dashboard.http.get(
        f"/v1/sessions/{RUNAWAY}/budgets", headers={"Authorization": f"Bearer {dashboard.keys['payments']}"}
    )
    assert r.status_code == 404


def test_sessions_filter_by_agent_type_and_state(dashboard: Dashboard) -> None:
    killed = dashboard.get("/v1/sessions", agent_type="researcher", state="killed")["sessions"]
    assert [s["session_id"] for s in killed] == [RUNAWAY]
    researchers = dashboard.get("/v1/sessions", agent_type="researcher", limit=1000)["sessions"]
    want = {e.event.session_id for e in dashboard.events if e.event.agent_type == "researcher"}
    assert {s["session_id"] for s in researchers} == want
    mine = dashboard.get("/v1/sessions", key="payments", agent_type="researcher", limit=1000)["sessions"]
    assert mine and {s["session_id"] for s in mine} == {s for s in want if s.startswith("payments-")}
