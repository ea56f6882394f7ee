"""Budget arithmetic over plain data: coverage, accumulation, crossings, windows, idempotent ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from processors.budget import (
    BudgetBook,
    BudgetState,
    calendar_start,
    default_session_policy,
    scope_value,
    signal_id,
    window_start,
)
from processors.budget.ledger import make_signal
from schemas.budgets import Action, BudgetPolicy, Scope, Window

pytestmark = pytest.mark.unit

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


def attr(session: str = "s1", team: str | None = "t1", agent_type: str = "reviewer") -> dict[Scope, str | None]:
    return {
        Scope.SESSION: session,
        Scope.AGENT_TYPE: agent_type,
        Scope.TEAM: team,
        Scope.PROJECT: None,
        Scope.CUSTOMER: None,
    }


def test_scope_value_and_match():
    p = BudgetPolicy(policy_id="p", scope=(Scope.TEAM, Scope.AGENT_TYPE), limit_tokens=1)
    assert scope_value(p, attr()) == "team=t1|agent_type=reviewer"
    assert scope_value(p, attr(team=None)) is None
    matched = BudgetPolicy(policy_id="m", scope=(Scope.SESSION,), match={Scope.AGENT_TYPE: "coder"}, limit_tokens=1)
    assert scope_value(matched, attr()) is None
    assert scope_value(matched, attr(agent_type="coder")) == "session=s1"


def test_session_token_cap_fires_once_at_the_limit():
    policy = default_session_policy(1000)
    book = BudgetBook()
    assert book.apply([policy], attr(), T0, 600, Decimal("0.1")) == []
    crossings = book.apply([policy], attr(), T0, 400, Decimal("0.1"))
    assert [(c.at_limit, c.threshold) for c in crossings] == [(False, Decimal(1)), (True, Decimal(1))]
    c = crossings[1]
    assert (c.at_limit, c.spent_tokens, c.spent_cost, c.scope_value) == (True, 1000, Decimal("0.2"), "session=s1")
    assert book.apply([policy], attr(), T0, 10, Decimal(0)) == []  # once per window
    # another session has its own budget
    assert book.apply([policy], attr(session="s2"), T0, 999, Decimal(0)) == []


def test_thresholds_and_cost_limit():
    policy = BudgetPolicy(policy_id="c", scope=(Scope.SESSION,), limit_cost=Decimal("10"), action=Action.PAUSE)
    book = BudgetBook()
    got = book.apply([policy], attr(), T0, 0, Decimal("8"))
    assert [c.threshold for c in got] == [Decimal("0.5"), Decimal("0.8")]
    assert not any(c.at_limit for c in got)
    got = book.apply([policy], attr(), T0, 0, Decimal("2"))
    assert [(c.threshold, c.spent_cost, c.at_limit) for c in got] == [
        (Decimal("1"), Decimal("10"), False),
        (Decimal("1"), Decimal("10"), True),
    ]
    signal = make_signal(got[1], session_id="s1", now=T0, trigger_event_id="e" * 32)
    assert signal.action is Action.PAUSE
    assert signal.signal_id == signal_id("c", "session=s1", None, Action.PAUSE)


def test_signal_id_is_deterministic_and_distinct():
    a = signal_id("p", "session=s1", None, Action.KILL)
    assert a == signal_id("p", "session=s1", None, "kill")
    assert len({a, signal_id("p", "session=s2", None, Action.KILL), signal_id("p", "session=s1", T0, Action.KILL)}) == 3


def test_state_round_trips_and_loader_restores():
    policy = default_session_policy(100)
    book = BudgetBook()
    book.apply([policy], attr(), T0, 60, Decimal("0.5"), tag=2)
    dirty = book.take_dirty()
    assert len(dirty) == 1
    ((key, (state, tag)),) = dirty.items()
    assert tag == 2 and book.take_dirty() == {}
    saved = state.to_json()
    assert BudgetState.from_json(saved) == state
    restored = BudgetBook(loader=lambda k: saved if k == key else None)
    crossings = restored.apply([policy], attr(), T0, 40, Decimal(0))
    assert [c.spent_tokens for c in crossings if c.at_limit] == [100]


def test_calendar_windows_reset():
    policy = BudgetPolicy(
        policy_id="d",
        scope=(Scope.SESSION,),
        limit_tokens=100,
        window=Window.CALENDAR_DAY,
        timezone="Europe/Paris",
        thresholds=(Decimal(1),),
    )
    book = BudgetBook()
    # 21:30 UTC on 1 June is 23:30 in Paris; 22:30 UTC is the next Paris day
    assert book.apply([policy], attr(), datetime(2026, 6, 1, 21, 30, tzinfo=UTC), 90, Decimal(0)) == []
    assert book.apply([policy], attr(), datetime(2026, 6, 1, 22, 30, tzinfo=UTC), 90, Decimal(0)) == []
    got = book.apply([policy], attr(), datetime(2026, 6, 2, 8, tzinfo=UTC), 10, Decimal(0))
    assert [(c.spent_tokens, c.window_start) for c in got if c.at_limit] == [
        (100, datetime(2026, 6, 1, 22, tzinfo=UTC))
    ]
    assert calendar_start(Window.CALENDAR_WEEK, T0) == datetime(2026, 6, 1, tzinfo=UTC)  # a Monday
    assert calendar_start(Window.CALENDAR_MONTH, T0 + timedelta(days=20)) == datetime(2026, 6, 1, tzinfo=UTC)
    assert window_start(Window.LIFETIME, T0) is None


def test_rolling_window_slides_and_rearms():
    policy = BudgetPolicy(
        policy_id="r", scope=(Scope.SESSION,), limit_tokens=100, window=Window.ROLLING_1H, thresholds=(Decimal(1),)
    )
    book = BudgetBook()
    assert book.apply([policy], attr(), T0, 60, Decimal(0)) == []
    first = book.apply([policy], attr(), T0 + timedelta(minutes=30), 40, Decimal(0))
    assert [c.spent_tokens for c in first if c.at_limit] == [100]
    # 61 minutes after T0 the first 60 tokens have left the window: 40 + 10 < 100, re-armed
    assert book.apply([policy], attr(), T0 + timedelta(minutes=61), 10, Decimal(0)) == []
    again = book.apply([policy], attr(), T0 + timedelta(minutes=62), 50, Decimal(0))
    assert [c.spent_tokens for c in again if c.at_limit] == [100]
    assert again[-1].signal_id != first[-1].signal_id
    assert again[0].alert_id != first[0].alert_id


def test_unpriced_kill_signal_is_idempotent_per_session():
    from processors.budget import unpriced_kill_signal
    from schemas.events import CostEvent

    def ev(event_id: str) -> CostEvent:
        return CostEvent(
            event_id=event_id,
            kind="llm_call",
            occurred_at=T0,
            session_id="s9",
            workflow_id="w",
            step=0,
            step_name="x",
            agent_type="a",
            model="acme-9000",
            input_tokens=5,
        )

    a, b = unpriced_kill_signal(ev("a" * 32), T0), unpriced_kill_signal(ev("b" * 32), T0)
    assert a.signal_id == b.signal_id
    assert (a.action, a.session_id, a.reason) == (Action.KILL, "s9", "unpriced model: ?/acme-9000")


def test_every_changed_key_keeps_the_callers_tag():
    """Regression: the loop once reused `tag` for the window tag, so the second policy covering an
    event was written to the changelog partition 'lifetime' and the worker exited."""
    book = BudgetBook()
    policies = [
        default_session_policy(10_000),
        BudgetPolicy(policy_id="live", scope=(Scope.SESSION,), limit_tokens=2000),
    ]
    book.apply(policies, attr(), T0, 2500, Decimal(0), tag=1)
    assert sorted(tag for _, tag in book.take_dirty().values()) == [1, 1]


def test_a_changed_policy_is_applied_from_its_next_event():
    # the book works out a policy's thresholds and limits once; a new version of the policy (a new
    # object under the same id) must count from the next event, not the one seen first
    book = BudgetBook()
    first = BudgetPolicy(policy_id="p", scope=(Scope.SESSION,), limit_tokens=1000, thresholds=(Decimal("0.9"),))
    assert book.apply([first], attr(), T0, 500, Decimal(0)) == []
    tighter = first.model_copy(update={"limit_tokens": 600, "escalation": {Action.WARN: Decimal("0.5")}})
    got = book.apply([tighter], attr(), T0, 50, Decimal(0))
    assert [(c.threshold, c.spent_tokens, c.at_limit, c.action) for c in got] == [
        (Decimal("0.9"), 550, False, Action.KILL),
        (Decimal("0.5"), 550, True, Action.WARN),
    ]
    assert book.apply([first], attr(), T0, 50, Decimal(0)) == []  # 600 of 1000 again: under 0.9
