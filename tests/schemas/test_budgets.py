"""Budget policy contract: what a policy must say, and what it may not."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.budgets import Action, BudgetPolicy, Scope, SessionStatus, Signal, Window

pytestmark = pytest.mark.unit


def policy(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"policy_id": "cap-1", "scope": ["session"], "limit_tokens": 1000}
    base.update(overrides)
    return base


def test_defaults_are_lifetime_kill_with_three_thresholds() -> None:
    p = BudgetPolicy.model_validate(policy())
    assert p.window is Window.LIFETIME
    assert p.action is Action.KILL
    assert p.thresholds == (Decimal("0.5"), Decimal("0.8"), Decimal("1"))
    assert p.scope == (Scope.SESSION,)


def test_actions_are_graded() -> None:
    assert [a.rank for a in (Action.WARN, Action.DOWNGRADE, Action.PAUSE, Action.KILL)] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"limit_tokens": None}, "needs limit_tokens, limit_cost or both"),
        ({"scope": []}, "scope"),
        ({"scope": ["team", "team"]}, "names a dimension twice"),
        ({"scope": ["tenant"]}, "scope"),
        ({"thresholds": ["0"]}, "thresholds are fractions"),
        ({"thresholds": ["1.5"]}, "thresholds are fractions"),
        ({"limit_cost": "-1"}, "limit_cost"),
        ({"policy_id": "has space"}, "policy_id"),
        ({"window": "rolling_2h"}, "window"),
        ({"match": {"team": ""}}, "match"),
        ({"timezone": "Mars/Olympus_Mons"}, "unknown time zone"),
        ({"timezone": "../../etc/localtime"}, "unknown time zone"),
    ],
)
def test_bad_policies_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BudgetPolicy.model_validate(policy(**overrides))


def test_combined_scope_with_match() -> None:
    p = BudgetPolicy.model_validate(
        policy(scope=["team", "agent_type"], match={"agent_type": "pr-reviewer"}, limit_cost="25.00")
    )
    assert p.match == {Scope.AGENT_TYPE: "pr-reviewer"}
    assert p.limit_cost == Decimal("25.00")


def test_policy_with_a_match_round_trips_through_the_wire_format() -> None:
    from schemas.codec import decode, encode

    p = BudgetPolicy.model_validate(policy(scope=["team", "agent_type"], match={"team": "payments"}))
    assert decode(BudgetPolicy, encode(p)) == p


def test_a_signal_from_a_newer_worker_is_read_by_an_older_hook() -> None:
    """Fields a hook does not know (a worker upgraded first) are ignored, never a lost signal."""
    raw = {
        "signal_id": "s",
        "session_id": "x",
        "action": "kill",
        "policy_id": "p",
        "scope": ["team"],
        "scope_value": "team=a",
        "spent_tokens": 1,
        "spent_cost": "0.1",
        "reason": "r",
        "issued_at": "2026-11-29T00:00:00Z",
        "added_in_a_later_version": {"anything": 1},
    }
    signal = Signal.model_validate(raw)
    assert signal.action is Action.KILL and signal.scope_value == "team=a"
    status = SessionStatus.model_validate(
        {"session_id": "x", "state": "killed", "signal": raw, "updated_at": raw["issued_at"], "later": True}
    )
    assert status.signal == signal
