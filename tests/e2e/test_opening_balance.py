"""A budget created mid-window starts from the spend already made in it (its opening balance),
through the whole pipeline: cost events -> worker -> priced-events -> sink -> chDB; the policy
written through the API, read by the worker, the balance seeded once, thresholds fired once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from fastapi.testclient import TestClient
from genai_prices import Usage, calc_price

from api.app import create_app
from processors.budget.windows import bucket_of
from processors.policies import publish_policy
from schemas.budgets import BudgetPolicy, Scope, Window
from schemas.topics import ALERTS, BUDGET_POLICIES, COST_EVENTS, SIGNALS
from tests.conftest import read_topic
from tests.processors.conftest import make_event, produce, reader_factory

pytestmark = pytest.mark.integration

__all__ = ["reader_factory"]  # a fixture of the processors' tests, used here


def _wait_for_policies(settings: Any, signals: Any, tag: str, timeout: float = 60.0) -> None:
    """Until the worker applies every policy written so far: a canary policy written after them
    (same partition: read in order) kills a canary session, whose events go on until it does. An
    event the worker processed before it had a policy would not be counted by it (the bound
    api.opening_balance states)."""
    canary = f"canary-{tag}"
    publish_policy(settings, BudgetPolicy(policy_id=canary, scope=(Scope.SESSION,), match={Scope.SESSION: canary},
                                          limit_tokens=1, thresholds=(Decimal(1),)))  # fmt: skip
    deadline = time.monotonic() + timeout
    step = 0
    while not any(s["policy_id"] == canary for s in signals.wait_for(0, timeout=0.0, settle=0.3)):
        assert time.monotonic() < deadline, "the worker never applied the canary policy"
        _send(settings, [make_event(session_id=canary, workflow_id=f"wf-{canary}", step=step, team="canary")])
        step += 1


def _ours(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Signals or alerts without the canary's (one of each per canary)."""
    return [r for r in records if not r["policy_id"].startswith("canary-")]


def _gpt4o(input_tokens: int = 1000, output_tokens: int = 200) -> Decimal:
    return calc_price(
        Usage(input_tokens=input_tokens, output_tokens=output_tokens), "gpt-4o", provider_id="openai"
    ).total_price


UNIT = _gpt4o()  # one default event


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _zone_away_from_midnight(now: datetime) -> str:
    """A zone where today started over an hour ago and ends in more than one: the events of the
    test all fall in one calendar day whenever it runs."""
    for zone in ("UTC", "Asia/Tokyo", "America/New_York", "Asia/Kolkata"):
        local = now.astimezone(ZoneInfo(zone))
        if 1 <= local.hour < 22:
            return zone
    raise AssertionError("no zone away from midnight")  # pragma: no cover - the four zones cover every hour


def _events(team: str, sessions: list[str], count: int, at: datetime, tag: str = "before") -> list[dict[str, Any]]:
    return [
        make_event(
            session_id=sessions[i % len(sessions)],
            workflow_id=f"wf-{tag}-{sessions[i % len(sessions)]}",
            step=i,
            team=team,
            occurred_at=_iso(at),
        )
        for i in range(count)
    ]


def _send(settings: Any, events: list[dict[str, Any]]) -> None:
    produce(settings, COST_EVENTS.suffix, [(e["session_id"], e) for e in events])


def _wait_for_calls(client: TestClient, count: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    calls = 0
    while time.monotonic() < deadline:
        body = client.get("/v1/chargeback", params={"group_by": "team"}).json()
        calls = body["total"]["calls"]
        if calls >= count:
            assert calls == count, body
            return
        time.sleep(0.3)
    raise AssertionError(f"only {calls} of {count} calls reached the warehouse")


def _thresholds(alerts: list[dict[str, Any]]) -> list[tuple[Decimal, Decimal]]:
    return sorted((Decimal(a["threshold"]), Decimal(a["spent_cost"])) for a in alerts)


def test_a_team_day_budget_starts_from_the_days_spend_and_a_restart_does_not_add_it_again(
    settings_factory, worker_factory, reader_factory
):
    settings = settings_factory(auth="disabled")
    now = datetime.now(UTC)
    zone = _zone_away_from_midnight(now)
    worker = worker_factory(settings)
    alerts = reader_factory(settings, ALERTS.suffix)
    signals = reader_factory(settings, SIGNALS.suffix)
    with TestClient(create_app(settings, with_sink=True)) as client:
        # today: 18 events of team ml over 3 sessions; yesterday's and another team's never count
        _send(settings, _events("ml", ["ml-0", "ml-1", "ml-2"], 18, now - timedelta(minutes=30)))
        _send(settings, _events("ml", ["ml-old"], 1, now - timedelta(days=2)) + _events("web", ["web-0"], 2, now))
        _wait_for_calls(client, 21)

        body = {
            "policy_id": "ml-day",
            "scope": ["team"],
            "match": {"team": "ml"},
            "limit_cost": str(20 * UNIT),
            "window": "calendar_day",
            "timezone": zone,
            "action": "kill",
        }
        r = client.put("/v1/budgets/ml-day", json=body)
        assert r.status_code == 201, r.text
        opening = r.json()["opening_balance"]
        assert (opening["status"], opening["scopes"], Decimal(opening["spent_cost"])) == ("applied", 1, 18 * UNIT)
        assert opening["spent_tokens"] == 18 * 1200 and opening["omitted_scopes"] == 0
        assert client.get("/v1/budgets/ml-day").json() == {k: v for k, v in r.json().items() if k != "opening_balance"}
        _wait_for_policies(settings, signals, "day")

        # 90 % was spent before the policy existed: the next event fires the 50 % and 80 % alerts
        _send(settings, _events("ml", ["ml-new"], 1, datetime.now(UTC), tag="after"))
        fired = _ours(alerts.wait_for(3, settle=3.0))
        assert _thresholds(fired) == [(Decimal("0.5"), 19 * UNIT), (Decimal("0.8"), 19 * UNIT)], worker.log()[-3000:]
        top = {t["session_id"]: Decimal(t["spent_cost"]) for t in fired[0]["top_sessions"]}
        assert top == {"ml-0": 6 * UNIT, "ml-1": 6 * UNIT, "ml-2": 6 * UNIT, "ml-new": UNIT}
        assert _ours(signals.wait_for(2, timeout=2.0, settle=0.0)) == []

        # the next one reaches the limit: every session of the day is killed, once
        _send(settings, [make_event(session_id="ml-new", workflow_id="wf-after-ml-new", step=1, team="ml",
                                    occurred_at=_iso(datetime.now(UTC)))])  # fmt: skip
        got = _ours(signals.wait_for(5, settle=3.0))
        assert sorted(s["session_id"] for s in got) == ["ml-0", "ml-1", "ml-2", "ml-new"]
        assert {(s["action"], s["signal_id"], Decimal(s["spent_cost"])) for s in got} == {
            ("kill", got[0]["signal_id"], 20 * UNIT)
        }
        assert _thresholds(_ours(alerts.wait_for(4, settle=1.0)))[-1] == (Decimal(1), 20 * UNIT)

        # kill -9 and restart: the state comes back from the changelog (committed: the alerts above
        # are read committed and share its transactions), the balance is not added a second time
        worker.kill()
        restarted = worker_factory(settings)
        _send(settings, _events("ml", ["ml-late"], 1, datetime.now(UTC), tag="late"))
        got = _ours(signals.wait_for(6, timeout=90.0, settle=3.0))
        late = [s for s in got if s["session_id"] == "ml-late"]
        assert len(late) == 1, restarted.log()[-3000:]
        assert Decimal(late[0]["spent_cost"]) == 21 * UNIT  # 18 + 3 counted, not 39
        assert len(_ours(alerts.wait_for(5, timeout=3.0, settle=0.0))) == 3  # no alert twice


def test_a_rolling_budget_starts_from_its_buckets(settings_factory, worker_factory, reader_factory):
    settings = settings_factory(auth="disabled")
    now = datetime.now(UTC)
    worker = worker_factory(settings)
    alerts = reader_factory(settings, ALERTS.suffix)
    signals = reader_factory(settings, SIGNALS.suffix)
    early, recent, gone = now - timedelta(minutes=50), now - timedelta(minutes=5), now - timedelta(minutes=90)
    with TestClient(create_app(settings, with_sink=True)) as client:
        _send(settings, _events("ml", ["ml-0", "ml-1"], 6, early, tag="early"))
        _send(settings, _events("ml", ["ml-1"], 3, recent, tag="recent"))
        _send(settings, _events("ml", ["ml-0"], 2, gone, tag="gone"))  # out of the last hour
        _wait_for_calls(client, 11)
        body = {"policy_id": "ml-hour", "scope": ["team"], "limit_cost": str(10 * UNIT), "window": "rolling_1h"}
        r = client.post("/v1/budgets", json=body)
        assert r.status_code == 201, r.text
        assert Decimal(r.json()["opening_balance"]["spent_cost"]) == 9 * UNIT

        # the record carries the worker's bucket indexes (the SQL's and bucket_of agree)
        [(_, value)] = read_topic(settings, BUDGET_POLICIES.suffix)
        [scope] = orjson.loads(value or b"")["opening_balance"]["scopes"]
        w = Window.ROLLING_1H
        assert sorted((b, Decimal(c)) for b, _, c in scope["buckets"]) == sorted(
            [(bucket_of(w, early), 6 * UNIT), (bucket_of(w, recent), 3 * UNIT)]
        )
        _wait_for_policies(settings, signals, "hour")

        _send(settings, _events("ml", ["ml-2"], 1, datetime.now(UTC), tag="after"))
        fired = _ours(alerts.wait_for(4, settle=3.0))
        assert _thresholds(fired) == [(t, 10 * UNIT) for t in (Decimal("0.5"), Decimal("0.8"), Decimal(1))], (
            worker.log()[-3000:]
        )
        got = _ours(signals.wait_for(4, settle=2.0))
        # ml-0 spent in the window too (its early events): every session of the window is signalled
        assert sorted(s["session_id"] for s in got) == ["ml-0", "ml-1", "ml-2"]
        assert {Decimal(s["spent_cost"]) for s in got} == {10 * UNIT}


def test_session_budgets_start_from_each_sessions_spend_unless_asked_not_to(
    settings_factory, worker_factory, reader_factory
):
    settings = settings_factory(auth="disabled")
    worker = worker_factory(settings)
    signals = reader_factory(settings, SIGNALS.suffix)
    now = datetime.now(UTC)
    with TestClient(create_app(settings, with_sink=True)) as client:
        _send(settings, _events("ml", ["s-a"], 4, now - timedelta(minutes=2), tag="a"))
        _send(settings, _events("ml", ["s-b"], 1, now - timedelta(minutes=2), tag="b"))
        _send(settings, _events("web", ["w-a"], 4, now - timedelta(minutes=2), tag="w"))
        _wait_for_calls(client, 9)

        def cap(policy_id: str, team: str) -> dict[str, Any]:
            return {"policy_id": policy_id, "scope": ["session"], "match": {"team": team}, "limit_cost": str(5 * UNIT)}

        r = client.put("/v1/budgets/web-session", json=cap("web-session", "web"), params={"opening_balance": "false"})
        assert r.status_code == 201 and r.json()["opening_balance"]["status"] == "skipped"
        r = client.put("/v1/budgets/ml-session", json=cap("ml-session", "ml"))
        assert r.status_code == 201, r.text
        opening = r.json()["opening_balance"]
        assert (opening["scopes"], Decimal(opening["spent_cost"])) == (2, 5 * UNIT)
        _wait_for_policies(settings, signals, "session")

        after = datetime.now(UTC)
        _send(settings, _events("ml", ["s-a"], 1, after, tag="a2") + _events("ml", ["s-b"], 1, after, tag="b2"))
        _send(settings, _events("web", ["w-a"], 1, after, tag="w2"))
        got = _ours(signals.wait_for(2, settle=4.0))
        # s-a reaches 5 units with its balance; s-b (2) and w-a (1 from zero, by request) do not
        assert [(s["session_id"], s["policy_id"], Decimal(s["spent_cost"])) for s in got] == [
            ("s-a", "ml-session", 5 * UNIT)
        ], worker.log()[-3000:]
