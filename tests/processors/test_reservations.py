"""Reservations, wide scopes, alerts and event time in the budget arithmetic, without Kafka."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from processors.budget import (
    BudgetBook,
    BudgetState,
    Usage,
    alert_id,
    event_time,
    make_alert,
    make_signal,
    signal_id,
    usage_of,
)
from processors.pricing import price_event
from schemas.budgets import Action, BudgetPolicy, Scope, Window
from schemas.events import CostEvent, derive_event_id

pytestmark = pytest.mark.unit

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)
NOW_S = T0.timestamp()


def attr(session: str = "s1", team: str | None = "t1") -> dict[Scope, str | None]:
    return {Scope.SESSION: session, Scope.AGENT_TYPE: "a", Scope.TEAM: team, Scope.PROJECT: None, Scope.CUSTOMER: None}


def event(step: int, **kw: Any) -> CostEvent:
    values: dict[str, Any] = {
        "event_id": derive_event_id("wf", step, "x"),
        "kind": "llm_call",
        "occurred_at": T0,
        "session_id": "s1",
        "workflow_id": "wf",
        "step": step,
        "step_name": "x",
        "agent_type": "a",
        "provider": "openai",
        "model": "gpt-4o",
    }
    values.update(kw)
    return CostEvent(**values)


def reserve(rid: str, tokens: int = 0, cost: str = "0", expires: float = NOW_S + 600) -> Usage:
    return Usage(reserve=rid, reserve_tokens=tokens, reserve_cost=Decimal(cost), expires_at_s=expires)


def cost_cap(limit: str, **kw: Any) -> BudgetPolicy:
    return BudgetPolicy(policy_id="cap", scope=(Scope.SESSION,), limit_cost=Decimal(limit), **kw)


def only_state(book: BudgetBook) -> BudgetState:
    ((state,),) = [[s for s, _ in book.take_dirty().values()]]
    return state


def test_burst_of_reservations_signals_before_any_settles():
    """50 concurrent calls reserving $0.10 each against a $0.50 budget: the 5th reaches it."""
    policy = cost_cap("0.5", thresholds=(Decimal("0.5"), Decimal(1)))
    book = BudgetBook()
    limits = []
    for i in range(50):
        got = book.record([policy], attr(), T0, reserve(f"r{i}", 1000, "0.1"), now=T0)
        assert not [c for c in got if not c.at_limit], "reservations are not spend: no alert"
        limits += [(i, c) for c in got if c.at_limit]
    assert [i for i, _ in limits] == [4]
    crossing = limits[0][1]
    assert (crossing.spent_cost, crossing.reserved_cost, crossing.reserved_tokens) == (0, Decimal("0.5"), 5000)
    signal = make_signal(crossing, session_id="s1", now=T0)
    assert (signal.spent_cost, signal.spent_tokens, signal.action) == (Decimal("0.5"), 5000, Action.KILL)
    assert "reserved by calls in flight" in signal.reason


def test_settlement_replaces_the_reservation_by_the_actual_cost():
    policy = cost_cap("1")
    book = BudgetBook()
    book.record([policy], attr(), T0, reserve("r1", 5000, "0.9"), now=T0)
    assert only_state(book).reserved_cost == Decimal("0.9")
    got = book.record([policy], attr(), T0, Usage(tokens=1200, cost=Decimal("0.2"), release="r1"), now=T0)
    assert got == []
    state = only_state(book)
    assert (state.tokens, state.cost, state.reserved, state.reserved_cost) == (1200, Decimal("0.2"), {}, 0)
    # the same settlement again (it cannot happen after dedupe, but must not go negative)
    book.record([policy], attr(), T0, Usage(release="r1"), now=T0)
    assert only_state(book).reserved_cost == 0


def test_abort_releases_and_charges_what_was_consumed():
    policy = cost_cap("1")
    book = BudgetBook()
    book.record([policy], attr(), T0, reserve("r1", 5000, "0.9"), now=T0)
    book.record([policy], attr(), T0, reserve("r2", 5000, "0.05"), now=T0)
    book.record([policy], attr(), T0, Usage(tokens=10, cost=Decimal("0.001"), release="r1"), now=T0)
    state = only_state(book)
    assert (state.cost, state.reserved_cost, sorted(state.reserved)) == (Decimal("0.001"), Decimal("0.05"), ["r2"])


def test_reservation_without_settlement_expires():
    policy = cost_cap("1")
    book = BudgetBook()
    book.record([policy], attr(), T0, reserve("r1", 100, "0.6", expires=NOW_S + 600), now=T0)
    book.record([policy], attr(), T0, reserve("r2", 100, "0.3", expires=NOW_S + 900), now=T0)
    # 700 s later, a $0.2 call: r1 has expired, so 0.3 + 0.2 < 1 and nothing fires
    later = T0 + timedelta(seconds=700)
    assert book.record([policy], attr(), T0, Usage(tokens=1, cost=Decimal("0.2")), now=later) == []
    state = only_state(book)
    assert (sorted(state.reserved), state.reserved_cost, state.cost) == (["r2"], Decimal("0.3"), Decimal("0.2"))
    # had it not expired, the same call would have reached the limit
    fresh = BudgetBook()
    fresh.record([policy], attr(), T0, reserve("r1", 100, "0.6"), now=T0)
    fresh.record([policy], attr(), T0, reserve("r2", 100, "0.3"), now=T0)
    assert [c.at_limit for c in fresh.record([policy], attr(), T0, Usage(cost=Decimal("0.2")), now=T0)] == [True]


def test_reservations_survive_the_changelog_round_trip():
    policy = cost_cap("1")
    book = BudgetBook()
    book.record([policy], attr(), T0, reserve("r1", 4000, "0.7"), now=T0)
    ((key, (state, _)),) = book.take_dirty().items()
    saved = state.to_json()
    assert BudgetState.from_json(saved) == state
    restored = BudgetBook(loader=lambda k: saved if k == key else None)
    got = restored.record([policy], attr(), T0, reserve("r2", 1, "0.3"), now=T0)
    assert [(c.at_limit, c.reserved_cost) for c in got] == [(True, Decimal("1.0"))]


def test_usage_of_events_reserve_settle_and_release():
    started = event(0, kind="call_started", input_tokens=1000, max_output_tokens=4000)
    priced = price_event(started, now=T0)
    usage = usage_of(priced, NOW_S, 600)
    assert usage is not None
    # the estimate: 1000 input and 4000 output tokens at gpt-4o list price ($2.50 / $10 per MTok)
    assert (usage.reserve, usage.reserve_tokens, usage.reserve_cost) == (started.event_id, 5000, Decimal("0.0425"))
    assert (usage.tokens, usage.cost, usage.expires_at_s) == (0, 0, NOW_S + 600)
    estimated = price_event(event(1, kind="call_started", estimated_cost=Decimal("0.3")), now=T0)
    assert usage_of(estimated, NOW_S).reserve_cost == Decimal("0.3")  # type: ignore[union-attr]
    settled = usage_of(
        price_event(event(2, input_tokens=1000, output_tokens=100, settles=started.event_id), now=T0), NOW_S
    )
    assert settled == Usage(tokens=1100, cost=Decimal("0.0035"), release=started.event_id)
    aborted = usage_of(price_event(event(3, kind="call_aborted", settles=started.event_id), now=T0), NOW_S)
    assert aborted == Usage(release=started.event_id)
    assert Usage.from_json(usage.to_json()) == usage


def test_wide_scope_signals_every_session_and_refuses_latecomers():
    team = BudgetPolicy(policy_id="team", scope=(Scope.TEAM,), limit_cost=Decimal("1"), thresholds=(Decimal("0.5"),))
    book = BudgetBook()
    assert book.record([team], attr("a"), T0, Usage(cost=Decimal("0.4"))) == []
    got = book.record([team], attr("b"), T0, Usage(cost=Decimal("0.3")))
    assert [(c.threshold, c.at_limit, c.spent_cost, c.top_sessions) for c in got] == [
        (Decimal("0.5"), False, Decimal("0.7"), (("a", 0, Decimal("0.4")), ("b", 0, Decimal("0.3"))))
    ]
    got = book.record([team], attr("c"), T0, Usage(cost=Decimal("0.3")))
    assert [(c.at_limit, c.spent_cost, c.sessions) for c in got] == [(True, Decimal("1.0"), ("a", "b", "c"))]
    assert book.record([team], attr("a"), T0, Usage(cost=Decimal("0.1"))) == []  # already told
    latecomer = book.record([team], attr("d"), T0, Usage(tokens=5))
    assert [(c.at_limit, c.sessions, c.signal_id) for c in latecomer] == [(True, ("d",), got[0].signal_id)]
    # another team has its own budget
    assert book.record([team], attr("e", team="t2"), T0, Usage(cost=Decimal("0.9"))) != []


def test_alert_ids_are_deterministic_and_alerts_carry_the_figures():
    policy = cost_cap("1", window=Window.CALENDAR_DAY)
    got = BudgetBook().record([policy], attr(), T0, Usage(tokens=7, cost=Decimal("0.85")))
    assert [c.threshold for c in got] == [Decimal("0.5"), Decimal("0.8")]
    again = BudgetBook().record([policy], attr(), T0 + timedelta(hours=1), Usage(tokens=7, cost=Decimal("0.85")))
    assert [c.alert_id for c in got] == [c.alert_id for c in again]
    assert got[0].alert_id == alert_id("cap", "session=s1", datetime(2026, 6, 1, tzinfo=UTC), Decimal("0.50"))
    alert = make_alert(got[1], now=T0)
    assert (alert.threshold, alert.spent_cost, alert.spent_tokens, alert.limit_cost) == (
        Decimal("0.8"),
        Decimal("0.85"),
        7,
        Decimal("1"),
    )
    assert [(s.session_id, s.spent_cost) for s in alert.top_sessions] == [("s1", Decimal("0.85"))]
    # the next day is a new window: the thresholds fire again, with new ids
    tomorrow = BudgetBook()
    tomorrow.states = {}
    next_day = tomorrow.record([policy], attr(), T0 + timedelta(days=1), Usage(cost=Decimal("0.85")))
    assert {c.alert_id for c in next_day}.isdisjoint(c.alert_id for c in got)


def test_event_time_clamps_the_future_and_flags_the_late():
    assert event_time(T0 + timedelta(seconds=299), T0, 300, 3600) == (T0 + timedelta(seconds=299), False, False)
    assert event_time(T0 + timedelta(seconds=301), T0, 300, 3600) == (T0, True, False)
    assert event_time(T0 - timedelta(seconds=3600), T0, 300, 3600) == (T0 - timedelta(seconds=3600), False, False)
    assert event_time(T0 - timedelta(seconds=3601), T0, 300, 3600) == (T0 - timedelta(seconds=3601), False, True)


def test_late_events_count_only_in_windows_still_open():
    day = cost_cap("10", window=Window.CALENDAR_DAY)
    hour = cost_cap("10", window=Window.ROLLING_1H)
    life = cost_cap("10")
    now = datetime(2026, 6, 2, 0, 30, tzinfo=UTC)
    yesterday = datetime(2026, 6, 1, 23, 0, tzinfo=UTC)  # a closed calendar day, 90 min ago
    earlier_today = datetime(2026, 6, 2, 0, 1, tzinfo=UTC)
    for policy, at, counted in [
        (day, yesterday, False),
        (day, earlier_today, True),
        (hour, yesterday, False),
        (hour, earlier_today, True),
        (life, yesterday, True),
    ]:
        book = BudgetBook()
        book.record([policy], attr(), at, Usage(tokens=1, cost=Decimal(6)), now=now, late=True)
        states = [s for s, _ in book.take_dirty().values()]
        assert [s.cost for s in states] == ([Decimal(6)] if counted else []), (policy.window, at)


def test_downgrade_recommends_the_routed_model_and_graded_states():
    policy = BudgetPolicy(
        policy_id="dg",
        scope=(Scope.SESSION,),
        limit_cost=Decimal("1"),
        action=Action.DOWNGRADE,
        thresholds=(Decimal(1),),
        downgrade_to={"gpt-4o": "gpt-4o-mini"},
    )
    (limit,) = [c for c in BudgetBook().record([policy], attr(), T0, Usage(cost=Decimal(1))) if c.at_limit]
    assert make_signal(limit, session_id="s1", now=T0, model="gpt-4o").recommended_model == "gpt-4o-mini"
    assert make_signal(limit, session_id="s1", now=T0, model="o3").recommended_model is None
    assert [a.rank for a in (Action.WARN, Action.DOWNGRADE, Action.PAUSE, Action.KILL)] == [0, 1, 2, 3]


def test_reservations_count_in_wide_scopes_and_their_breach_reaches_every_session():
    """A team budget seen through the scope records: reservations from several sessions add up."""
    team = BudgetPolicy(policy_id="team", scope=(Scope.TEAM,), limit_cost=Decimal("1"), thresholds=(Decimal(1),))
    book = BudgetBook()
    got = []
    for i, session in enumerate(["a", "b", "c", "d"]):
        usage = Usage(reserve=f"r{i}", reserve_tokens=10, reserve_cost=Decimal("0.3"), expires_at_s=NOW_S + 600)
        got += book.record_scope(team, "team=t1", T0, usage, now=T0, session_id=session)
    assert [(c.at_limit, c.sessions, c.reserved_cost, c.spent_cost) for c in got] == [
        (True, ("a", "b", "c", "d"), Decimal("1.2"), Decimal(0))
    ]
    # settling below the estimates keeps the state exact; the kill already sent stands (lifetime)
    for i, session in enumerate(["a", "b", "c", "d"]):
        book.record_scope(
            team, "team=t1", T0, Usage(tokens=5, cost=Decimal("0.1"), release=f"r{i}"), now=T0, session_id=session
        )
    state = only_state(book)
    assert (state.cost, state.tokens, state.reserved) == (Decimal("0.4"), 20, {})
    assert {s: c for s, (_, c) in state.sessions.items()} == {s: Decimal("0.1") for s in "abcd"}


def test_one_policy_escalates_warn_downgrade_kill():
    policy = BudgetPolicy(
        policy_id="ladder",
        scope=(Scope.SESSION,),
        limit_tokens=100,
        action=Action.KILL,
        thresholds=(Decimal(1),),
        escalation={Action.WARN: Decimal("0.5"), Action.DOWNGRADE: Decimal("0.8")},
        downgrade_to={"gpt-4o": "gpt-4o-mini"},
    )
    book = BudgetBook()

    def actions(tokens: int) -> list[tuple[Action, str | None, int]]:
        got = [c for c in book.record([policy], attr(), T0, Usage(tokens=tokens), now=T0) if c.at_limit]
        signals = [make_signal(c, session_id="s1", now=T0, model="gpt-4o") for c in got]
        return [(s.action, s.recommended_model, s.spent_tokens) for s in signals]

    assert actions(49) == []
    assert actions(1) == [(Action.WARN, None, 50)]
    assert actions(29) == []
    # a reservation counts towards the next step too
    got = book.record([policy], attr(), T0, reserve("r1", 1), now=T0)
    assert [(c.action, c.spent_tokens, c.reserved_tokens) for c in got] == [(Action.DOWNGRADE, 79, 1)]
    assert make_signal(got[0], session_id="s1", now=T0, model="gpt-4o").recommended_model == "gpt-4o-mini"
    assert actions(30) == [(Action.KILL, None, 110)]
    ids = {signal_id("ladder", "session=s1", None, a) for a in (Action.WARN, Action.DOWNGRADE, Action.KILL)}
    assert len(ids) == 3


@pytest.mark.parametrize(
    "escalation",
    [
        {Action.KILL: Decimal("0.5")},  # not milder than the policy's kill
        {Action.WARN: Decimal("0.8"), Action.DOWNGRADE: Decimal("0.5")},  # milder must come first
        {Action.WARN: Decimal("1")},  # the limit belongs to the policy's action
    ],
)
def test_escalation_must_be_graded(escalation):
    with pytest.raises(ValueError, match="escalation"):
        BudgetPolicy(policy_id="x", scope=(Scope.SESSION,), limit_tokens=1, escalation=escalation)
