"""Reservations, team budgets through the scope repartition, alerts and event time, against
the real broker and a worker subprocess."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

from agentledger.kafka_admin import wait_for_group
from processors.budget import alert_id
from processors.policies import publish_policy
from schemas.budgets import BudgetPolicy, Scope
from schemas.topics import ALERTS, COST_EVENTS, PRICED_EVENTS, SIGNALS
from tests.processors.conftest import make_event, produce

pytestmark = pytest.mark.integration


def _gpt4o(input_tokens: int, output_tokens: int) -> Decimal:
    return calc_price(
        Usage(input_tokens=input_tokens, output_tokens=output_tokens), "gpt-4o", provider_id="openai"
    ).total_price


def test_burst_of_call_started_is_signalled_before_any_call_settles(settings_factory, worker_factory, reader_factory):
    """50 concurrent calls each reserving $0.10 against a $0.50 session budget: the kill comes from
    the reservations alone; the calls' settlements are only produced after it arrived."""
    settings = settings_factory()
    publish_policy(
        settings,
        BudgetPolicy(policy_id="burst", scope=(Scope.SESSION,), limit_cost=Decimal("0.5"), thresholds=(Decimal(1),)),
    )
    worker = worker_factory(settings)
    signals = reader_factory(settings, SIGNALS.suffix)
    alerts = reader_factory(settings, ALERTS.suffix)
    started = [
        make_event(
            kind="call_started",
            session_id="s-burst",
            workflow_id="wf-burst",
            step=i,
            step_name="start",
            input_tokens=1000,
            output_tokens=0,
            max_output_tokens=4000,
            estimated_cost="0.1",
        )
        for i in range(50)
    ]
    produce(settings, COST_EVENTS.suffix, [("s-burst", e) for e in started])
    got = signals.wait_for(1, settle=2.0)
    assert len(got) == 1, worker.log()[-3000:]
    sig = got[0]
    assert (sig["session_id"], sig["policy_id"], sig["action"]) == ("s-burst", "burst", "kill")
    assert (Decimal(sig["spent_cost"]), sig["spent_tokens"]) == (Decimal("0.5"), 25_000)  # 5 reservations
    assert sig["trigger_event_id"] == started[4]["event_id"]
    assert alerts.wait_for(1, timeout=3.0, settle=0.0) == [], "reservations are not spend: no alert yet"

    # now the 50 calls finish, each for 1000 + 200 tokens of gpt-4o
    settled = [
        make_event(
            session_id="s-burst",
            workflow_id="wf-burst",
            step=i,
            step_name="done",
            input_tokens=1000,
            output_tokens=200,
            settles=e["event_id"],
        )
        for i, e in enumerate(started)
    ]
    produce(settings, COST_EVENTS.suffix, [("s-burst", e) for e in settled])
    priced = reader_factory(settings, PRICED_EVENTS.suffix).wait_for(100, settle=1.0)
    assert len(priced) == 100
    # the settled spend, 50 x $0.0045 = $0.225, is under the limit: the only alert is none
    assert sum(Decimal(r["cost"]) for r in priced if r["event"]["kind"] == "llm_call") == 50 * _gpt4o(1000, 200)
    assert alerts.wait_for(1, timeout=4.0, settle=0.0) == []
    assert signals.wait_for(2, timeout=2.0, settle=0.0) == got  # signalled once


def test_team_budget_across_partitions_trips_once_at_the_exact_spend(settings_factory, worker_factory, reader_factory):
    settings = settings_factory()
    unit = _gpt4o(1000, 200)  # $0.0045 per event
    limit = 10 * unit
    publish_policy(
        settings,
        BudgetPolicy(
            policy_id="team-cap",
            scope=(Scope.TEAM,),
            limit_cost=limit,
            thresholds=(Decimal("0.5"), Decimal("0.8"), Decimal(1)),
        ),
    )
    worker = worker_factory(settings)
    signals = reader_factory(settings, SIGNALS.suffix)
    alerts = reader_factory(settings, ALERTS.suffix)
    priced = reader_factory(settings, PRICED_EVENTS.suffix)
    sessions = [f"team-s{i}" for i in range(6)]
    # 12 events of the team over 6 sessions, interleaved; another team's events never count
    events = [make_event(session_id=s, workflow_id=f"wf-{s}", step=i, team="blue") for i in range(2) for s in sessions]
    others = [make_event(session_id=f"other-{i}", team="red") for i in range(3)]
    produce(settings, COST_EVENTS.suffix, [(e["session_id"], e) for e in events + others])
    assert len(priced.wait_for(15, settle=0.0)) == 15
    parts = {p for k, _, p in priced.records if k and k.decode().startswith("team-")}
    assert len(parts) >= 2, "the team's sessions must span partitions for this test to mean anything"

    got = signals.wait_for(len(sessions), timeout=40.0, settle=4.0)
    assert sorted(s["session_id"] for s in got) == sorted(sessions), worker.log()[-3000:]
    assert {s["signal_id"] for s in got} == {got[0]["signal_id"]}
    assert all(s["scope_value"] == "team=blue" and s["policy_id"] == "team-cap" for s in got)
    # the breach itself is at exactly 10 events' spend, whichever order the partitions arrived in
    assert min(Decimal(s["spent_cost"]) for s in got) == limit

    fired = alerts.wait_for(3, settle=2.0)
    assert sorted((Decimal(a["threshold"]), Decimal(a["spent_cost"])) for a in fired) == [
        (Decimal("0.5"), 5 * unit),
        (Decimal("0.8"), 8 * unit),
        (Decimal(1), 10 * unit),
    ]
    assert {a["alert_id"] for a in fired} == {
        alert_id("team-cap", "team=blue", None, Decimal(t)) for t in ("0.5", "0.8", "1")
    }
    assert all(a["top_sessions"] and a["top_sessions"][0]["session_id"].startswith("team-s") for a in fired)

    # a session that starts after the breach is refused at its first event
    produce(settings, COST_EVENTS.suffix, [("team-late", make_event(session_id="team-late", team="blue"))])
    later = signals.wait_for(len(sessions) + 1, timeout=30.0, settle=2.0)
    assert Counter(s["session_id"] for s in later) == Counter([*sessions, "team-late"])
    assert later[-1]["session_id"] == "team-late" and later[-1]["signal_id"] == got[0]["signal_id"]
    assert len(alerts.wait_for(4, timeout=2.0, settle=0.0)) == 3


def test_future_events_are_clamped_and_old_ones_flagged_late(settings_factory, worker_factory, reader_factory):
    settings = settings_factory(max_future_skew_s=60, late_grace_s=600)
    worker_factory(settings)
    now = datetime.now(UTC)
    future = make_event(session_id="s-t", occurred_at=(now + timedelta(hours=2)).isoformat())
    old = make_event(session_id="s-t", occurred_at=(now - timedelta(hours=2)).isoformat())
    fine = make_event(session_id="s-t", occurred_at=(now - timedelta(seconds=30)).isoformat())
    produce(settings, COST_EVENTS.suffix, [("s-t", future), ("s-t", old), ("s-t", fine)])
    got = {r["event"]["event_id"]: r for r in reader_factory(settings, PRICED_EVENTS.suffix).wait_for(3, settle=0.5)}
    assert [(got[e["event_id"]]["clamped"], got[e["event_id"]]["late"]) for e in (future, old, fine)] == [
        (True, False),
        (False, True),
        (False, False),
    ]
    clamped_at = datetime.fromisoformat(got[future["event_id"]]["event"]["occurred_at"])
    assert clamped_at < now + timedelta(minutes=5)
    assert datetime.fromisoformat(got[old["event_id"]]["event"]["occurred_at"]) == datetime.fromisoformat(
        old["occurred_at"]
    )  # a late event keeps its own time
    assert all(Decimal(r["cost"]) == _gpt4o(1000, 200) for r in got.values())  # all still charged


def test_team_breach_is_signalled_before_the_usage_commits(settings_factory, worker_factory, reader_factory):
    """With a 30 s commit interval and no commit when the intake goes quiet, the team's kill
    reaches every session while nothing the worker wrote is committed yet (read_committed readers
    see no priced event): the scope preview reads scope-usage uncommitted. (That the committed path then sends no second signal
    and the alerts come once each is the test above, with the default commit interval.)"""
    settings = settings_factory(commit_interval_s=30.0, quiet_commit_s=0)
    unit = _gpt4o(1000, 200)
    limit = 10 * unit
    publish_policy(
        settings,
        BudgetPolicy(
            policy_id="team-fast", scope=(Scope.TEAM,), limit_cost=limit, thresholds=(Decimal("0.5"), Decimal(1))
        ),
    )
    worker = worker_factory(settings)
    assert wait_for_group(settings, settings.worker_id, timeout=90), worker.log()[-3000:]
    signals = reader_factory(settings, SIGNALS.suffix)
    priced = reader_factory(settings, PRICED_EVENTS.suffix)
    sessions = [f"fast-s{i}" for i in range(6)]
    events = [make_event(session_id=s, workflow_id=f"wf-{s}", step=i, team="green") for i in range(2) for s in sessions]
    produce(settings, COST_EVENTS.suffix, [(e["session_id"], e) for e in events])

    got = signals.wait_for(len(sessions), timeout=15.0, settle=0.5)
    assert priced.wait_for(1, timeout=0.5, settle=0.0) == [], "a commit came first: this test proves nothing"
    assert sorted(s["session_id"] for s in got) == sorted(sessions), worker.log()[-3000:]
    assert {(s["policy_id"], s["scope_value"], s["action"]) for s in got} == {("team-fast", "team=green", "kill")}
    assert min(Decimal(s["spent_cost"]) for s in got) == limit
