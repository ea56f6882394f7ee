"""Opening balances in the budget arithmetic: balance -> seeded states, thresholds the balance
already reached firing once at the next event, no second seeding after a restart, and events
processed before the balance was read kept out of a seeded state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from processors.budget import BudgetBook, BudgetState, Usage, seed_states, state_key
from processors.budget.windows import bucket_of, bucket_start, calendar_start
from schemas.budgets import OpeningBalance, OpeningScope, PolicyRecord, Scope, Window, split_record
from schemas.codec import encode

pytestmark = pytest.mark.unit

T0 = datetime(2026, 6, 1, 15, tzinfo=UTC)
UNIT = Decimal("0.0045")
ZERO_COST = Decimal(0)


def attr(session: str, team: str = "ml") -> dict[Scope, str | None]:
    return {Scope.SESSION: session, Scope.AGENT_TYPE: "a", Scope.TEAM: team, Scope.PROJECT: None, Scope.CUSTOMER: None}


def team_day_policy(**extra: Any) -> PolicyRecord:
    fields: dict[str, Any] = {
        "policy_id": "ml-day",
        "scope": ["team"],
        "limit_cost": 20 * UNIT,
        "window": "calendar_day",
        "timezone": "Europe/Paris",
    }
    fields.update(extra)
    return PolicyRecord.model_validate(fields)


def day_balance(as_of: datetime = T0) -> OpeningBalance:
    return OpeningBalance(
        as_of=as_of,
        window_start=calendar_start(Window.CALENDAR_DAY, as_of, "Europe/Paris"),
        scopes=(
            OpeningScope(
                scope_value="team=ml",
                tokens=18_000,
                cost=18 * UNIT,
                sessions=(("s1", 12_000, 12 * UNIT), ("s2", 6000, 6 * UNIT)),
            ),
        ),
    )


def seeded_book(policy: Any, balance: OpeningBalance, stored: dict[str, Any] | None = None) -> BudgetBook:
    """A book like the worker's: stored state first, else the policy's seed."""
    seeds = {k: s.to_json() for k, s in seed_states(policy, balance).items()}
    stored = stored if stored is not None else {}
    return BudgetBook(loader=lambda key: stored.get(key) or seeds.get(key))


def test_a_balance_seeds_the_state_of_its_window_with_its_sessions_and_as_of():
    policy, _ = split_record(team_day_policy())
    states = seed_states(policy, day_balance())
    key = state_key("ml-day", "team=ml", datetime(2026, 5, 31, 22, tzinfo=UTC), Window.CALENDAR_DAY)
    assert list(states) == [key]
    state = states[key]
    assert (state.tokens, state.cost, state.since) == (18_000, 18 * UNIT, T0.timestamp())
    assert state.sessions == {"s1": [12_000, 12 * UNIT], "s2": [6000, 6 * UNIT]}
    assert BudgetState.from_json(state.to_json()) == state  # the changelog keeps `since`


def test_thresholds_already_reached_fire_once_at_the_next_event_then_the_limit_kills_every_session():
    policy, _ = split_record(team_day_policy())
    book = seeded_book(policy, day_balance())
    now = T0 + timedelta(seconds=5)
    first = book.record([policy], attr("s3"), now, Usage(tokens=1000, cost=UNIT), now=now)
    assert [(c.threshold, c.spent_cost, c.limit) for c in first] == [
        (Decimal("0.5"), 19 * UNIT, False),
        (Decimal("0.8"), 19 * UNIT, False),
    ]
    assert [s for s, _, _ in first[1].top_sessions] == ["s1", "s2", "s3"]  # the balance's sessions rank
    assert book.record([policy], attr("s3"), now, Usage(cost=ZERO_COST), now=now) == []  # once
    over = book.record([policy], attr("s1"), now, Usage(tokens=1000, cost=UNIT), now=now)
    kill = [c for c in over if c.limit]
    assert [(c.threshold, c.spent_cost) for c in over if not c.limit] == [(Decimal(1), 20 * UNIT)]
    assert len(kill) == 1 and sorted(kill[0].sessions) == ["s1", "s2", "s3"]


def test_a_restored_state_is_never_seeded_again():
    policy, _ = split_record(team_day_policy())
    now = T0 + timedelta(seconds=5)
    book = seeded_book(policy, day_balance())
    book.record([policy], attr("s3"), now, Usage(tokens=1000, cost=UNIT), now=now)
    changelog = {k: state.to_json() for k, (state, _) in book.take_dirty().items()}
    # a restart: the worker reads the state back from the changelog, the seed is still there
    again = seeded_book(policy, day_balance(), stored=changelog)
    out = again.record([policy], attr("s3"), now, Usage(tokens=1000, cost=UNIT), now=now)
    assert [(c.threshold, c.spent_cost) for c in out] == [(Decimal(1), 20 * UNIT), (Decimal(1), 20 * UNIT)]


def test_events_processed_before_as_of_are_kept_out_of_a_seeded_state():
    """They may be in the balance already (a replaced policy's events in flight to the scope owner)."""
    policy, _ = split_record(team_day_policy())
    book = seeded_book(policy, day_balance())
    early = T0 - timedelta(seconds=1)
    assert book.record([policy], attr("s1"), early, Usage(tokens=1000, cost=UNIT), now=early) == []
    out = book.record([policy], attr("s1"), T0, Usage(tokens=1000, cost=UNIT), now=T0)
    assert {c.spent_cost for c in out} == {19 * UNIT}


def test_an_event_of_another_window_is_not_seeded():
    policy, _ = split_record(team_day_policy())
    book = seeded_book(policy, day_balance())
    tomorrow = T0 + timedelta(days=1)
    assert book.record([policy], attr("s1"), tomorrow, Usage(tokens=1000, cost=UNIT), now=tomorrow) == []
    [(state, _)] = book.take_dirty().values()
    assert (state.cost, state.since) == (UNIT, None)


def test_rolling_buckets_are_seeded_and_slide_out():
    policy, _ = split_record(team_day_policy(window="rolling_1h", limit_cost=10 * UNIT))
    w = Window.ROLLING_1H
    old, recent = T0 - timedelta(minutes=50), T0 - timedelta(minutes=5)
    balance = OpeningBalance(
        as_of=T0,
        scopes=(
            OpeningScope(
                scope_value="team=ml",
                tokens=2000,
                cost=9 * UNIT,
                buckets=((bucket_of(w, old), 1000, 6 * UNIT), (bucket_of(w, recent), 1000, 3 * UNIT)),
            ),
        ),
    )
    [(key, state)] = seed_states(policy, balance).items()
    assert key == state_key("ml-day", "team=ml", None, w)
    assert state.buckets == {bucket_of(w, old): [1000, 6 * UNIT], bucket_of(w, recent): [1000, 3 * UNIT]}
    assert bucket_start(w, bucket_of(w, old)) <= old < bucket_start(w, bucket_of(w, old) + 1)

    book = seeded_book(policy, balance)
    # 20 minutes later the old bucket has slid out: 3 + 1 units, under every threshold
    later = T0 + timedelta(minutes=20)
    assert book.record([policy], attr("s1"), later, Usage(tokens=1, cost=UNIT), now=later) == []
    fresh = seeded_book(policy, balance)
    out = fresh.record([policy], attr("s1"), T0, Usage(tokens=1, cost=UNIT), now=T0)  # 10 units: the limit
    assert any(c.limit and c.spent_cost == 10 * UNIT for c in out)


def test_a_session_scope_balance_has_no_session_lists():
    policy, _ = split_record(team_day_policy(scope=["session"], window="lifetime"))
    balance = OpeningBalance(as_of=T0, scopes=(OpeningScope(scope_value="session=s1", tokens=5, cost=UNIT),))
    [(key, state)] = seed_states(policy, balance).items()
    assert key == state_key("ml-day", "session=s1", None, Window.LIFETIME)
    assert (state.cost, state.sessions) == (UNIT, {})


def test_a_record_without_a_balance_is_the_plain_policy_on_the_wire():
    record = team_day_policy()
    policy, balance = split_record(record)
    assert balance is None and encode(policy) == encode(record)
    with_balance = record.model_copy(update={"opening_balance": day_balance()})
    parsed, got = split_record(PolicyRecord.model_validate_json(encode(with_balance)))
    assert parsed == policy and got == day_balance()
