"""Budget arithmetic over plain data: which budgets cover an event, what they have spent, and
when a limit or threshold is crossed.

State is one `BudgetState` per (policy, scope value, window instance), addressed by a string
key, so a worker can keep it in memory per partition and write only changed keys to its
changelog. Thresholds fire once per window instance; a rolling window re-arms a threshold
when its spend falls back below it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from processors.budget.windows import (
    bucket_of,
    bucket_start,
    first_live_bucket,
    is_rolling,
    window_start,
)
from schemas.budgets import Action, BudgetPolicy, Scope, Signal, Window
from schemas.events import CostEvent, EventKind, PricedEvent

ZERO = Decimal(0)
ONE = Decimal(1)
DEFAULT_SESSION_POLICY_ID = "default-session-token-cap"
UNPRICED_POLICY_ID = "unpriced-model"

Attribution = Mapping[Scope, str | None]


def attribution_of(event: CostEvent) -> dict[Scope, str | None]:
    return {
        Scope.SESSION: event.session_id,
        Scope.AGENT_TYPE: event.agent_type,
        Scope.TEAM: event.team,
        Scope.PROJECT: event.project,
        Scope.CUSTOMER: event.customer,
    }


def scope_value(policy: BudgetPolicy, attribution: Attribution) -> str | None:
    """`session=abc` or `team=t1|agent_type=x` if the policy covers the event, else None."""
    for dim, wanted in policy.match.items():
        if attribution.get(dim) != wanted:
            return None
    parts = []
    for dim in policy.scope:
        value = attribution.get(dim)
        if value is None:
            return None
        parts.append(f"{dim.value}={value}")
    return "|".join(parts)


def _window_tag(start: datetime | None) -> str:
    return "lifetime" if start is None else start.isoformat()


def signal_id(policy_id: str, scope_val: str, start: datetime | None, action: Action | str) -> str:
    """Deterministic, so a signal re-sent after a crash or replay is recognisably the same one."""
    text = f"{policy_id}\x1f{scope_val}\x1f{_window_tag(start)}\x1f{Action(action).value}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def state_key(policy_id: str, scope_val: str, start: datetime | None, window: Window) -> str:
    # rolling windows keep one state (with buckets) per scope value; others one per window instance
    tag = window.value if is_rolling(window) else _window_tag(start)
    return f"{policy_id}\x1f{scope_val}\x1f{tag}"


def default_session_policy(token_cap: int) -> BudgetPolicy:
    """Settings.session_token_cap as a policy: kill a session once it has used `token_cap` tokens."""
    return BudgetPolicy(
        policy_id=DEFAULT_SESSION_POLICY_ID,
        name="default per-session token cap",
        scope=(Scope.SESSION,),
        limit_tokens=token_cap,
        window=Window.LIFETIME,
        action=Action.KILL,
        thresholds=(ONE,),
    )


def usage_of(priced: PricedEvent) -> tuple[int, Decimal] | None:
    """(tokens, cost) an event adds to spend; None for reservations, which do not spend."""
    kind = priced.event.kind
    if kind is EventKind.CALL_STARTED:
        return None
    if kind is EventKind.ADJUSTMENT:
        return 0, priced.cost
    return priced.event.total_tokens, priced.cost


@dataclass
class BudgetState:
    tokens: int = 0
    cost: Decimal = ZERO
    buckets: dict[int, list[Any]] = field(default_factory=dict)
    """Rolling windows only: bucket index -> [tokens, cost]."""
    fired: dict[str, str] = field(default_factory=dict)
    """Threshold (as text) -> the window tag it fired in."""

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "cost": str(self.cost),
            "buckets": {str(b): [t, str(c)] for b, (t, c) in self.buckets.items()},
            "fired": dict(self.fired),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BudgetState:
        return cls(
            tokens=int(data.get("tokens", 0)),
            cost=Decimal(data.get("cost", "0")),
            buckets={int(b): [int(t), Decimal(c)] for b, (t, c) in data.get("buckets", {}).items()},
            fired=dict(data.get("fired", {})),
        )


@dataclass(frozen=True, slots=True)
class Crossing:
    """A budget reached `threshold` of its limit; at 1 the policy's action applies."""

    policy: BudgetPolicy
    scope_value: str
    window_start: datetime | None
    threshold: Decimal
    spent_tokens: int
    spent_cost: Decimal

    @property
    def at_limit(self) -> bool:
        return self.threshold >= ONE

    @property
    def signal_id(self) -> str:
        return signal_id(self.policy.policy_id, self.scope_value, self.window_start, self.policy.action)


def _reached(policy: BudgetPolicy, threshold: Decimal, tokens: int, cost: Decimal) -> bool:
    if policy.limit_tokens is not None and tokens >= threshold * policy.limit_tokens:
        return True
    return policy.limit_cost is not None and cost >= threshold * policy.limit_cost


class BudgetBook:
    """Spend per budget, for the events one worker owns (one partition's sessions, or more)."""

    def __init__(self, loader: Callable[[str], Mapping[str, Any] | None] | None = None) -> None:
        self.states: dict[str, BudgetState] = {}
        self.dirty: dict[str, Any] = {}
        """Changed keys since the last `take_dirty`, each with the caller's tag (e.g. a partition)."""
        self._loader = loader
        """Reads a state missing from memory (e.g. restored from a changelog)."""

    def load(self, key: str, data: Mapping[str, Any] | None) -> None:
        if data is None:
            self.states.pop(key, None)
        else:
            self.states[key] = BudgetState.from_json(data)

    def take_dirty(self) -> dict[str, tuple[BudgetState, Any]]:
        """The states changed since the last call and their tags, for writing to a changelog."""
        out = {k: (self.states[k], tag) for k, tag in self.dirty.items() if k in self.states}
        self.dirty.clear()
        return out

    def _state(self, key: str) -> BudgetState:
        state = self.states.get(key)
        if state is None:
            data = self._loader(key) if self._loader is not None else None
            state = self.states[key] = BudgetState.from_json(data) if data is not None else BudgetState()
        return state

    def apply(
        self,
        policies: Iterable[BudgetPolicy],
        attribution: Attribution,
        at: datetime,
        tokens: int,
        cost: Decimal,
        tag: Any = None,
    ) -> list[Crossing]:
        """Add one event's usage to every budget covering it; return the thresholds it crossed.

        `tag` is kept with each changed key until `take_dirty` (the worker passes the partition).
        """
        crossings: list[Crossing] = []
        for policy in policies:
            if not policy.enabled:
                continue
            sval = scope_value(policy, attribution)
            if sval is None:
                continue
            start = window_start(policy.window, at, policy.timezone)
            key = state_key(policy.policy_id, sval, start, policy.window)
            state = self._state(key)
            if is_rolling(policy.window):
                spent_tokens, spent_cost, start = self._add_rolling(policy.window, state, at, tokens, cost)
            else:
                state.tokens += tokens
                state.cost += cost
                spent_tokens, spent_cost = state.tokens, state.cost
            self.dirty[key] = tag
            fired_in = _window_tag(start)
            for threshold in sorted(policy.thresholds):
                t_key = str(threshold)
                reached = _reached(policy, threshold, spent_tokens, spent_cost)
                if not reached:
                    if is_rolling(policy.window):
                        state.fired.pop(t_key, None)  # spend slid back below: re-arm
                    continue
                if t_key in state.fired:
                    continue
                state.fired[t_key] = fired_in
                crossings.append(Crossing(policy, sval, start, threshold, spent_tokens, spent_cost))
        return crossings

    @staticmethod
    def _add_rolling(
        window: Window, state: BudgetState, at: datetime, tokens: int, cost: Decimal
    ) -> tuple[int, Decimal, datetime]:
        bucket = bucket_of(window, at)
        newest = max([bucket, *state.buckets.keys()])
        oldest = first_live_bucket(window, bucket_start(window, newest))
        if bucket >= oldest:
            slot = state.buckets.setdefault(bucket, [0, ZERO])
            slot[0] += tokens
            slot[1] += cost
        for b in [b for b in state.buckets if b < oldest]:
            del state.buckets[b]
        spent_tokens = sum(t for t, _ in state.buckets.values())
        spent_cost = sum((c for _, c in state.buckets.values()), ZERO)
        state.tokens, state.cost = spent_tokens, spent_cost
        return spent_tokens, spent_cost, bucket_start(window, oldest)


def make_signal(
    crossing: Crossing,
    *,
    session_id: str,
    now: datetime,
    trigger_event_id: str | None = None,
    model: str | None = None,
) -> Signal:
    policy = crossing.policy
    what = []
    if policy.limit_tokens is not None:
        what.append(f"{crossing.spent_tokens}/{policy.limit_tokens} tokens")
    if policy.limit_cost is not None:
        what.append(f"${crossing.spent_cost}/${policy.limit_cost}")
    reason = f"budget {policy.policy_id} ({crossing.scope_value}, {policy.window.value}) reached: " + ", ".join(what)
    recommended = policy.downgrade_to.get(model) if model and policy.action is Action.DOWNGRADE else None
    return Signal(
        signal_id=crossing.signal_id,
        session_id=session_id,
        action=policy.action,
        policy_id=policy.policy_id,
        scope=policy.scope,
        scope_value=crossing.scope_value,
        window_start=crossing.window_start,
        limit_tokens=policy.limit_tokens,
        limit_cost=policy.limit_cost,
        spent_tokens=crossing.spent_tokens,
        spent_cost=crossing.spent_cost,
        reason=reason[:1024],
        recommended_model=recommended,
        trigger_event_id=trigger_event_id,
        issued_at=now,
    )


def unpriced_kill_signal(event: CostEvent, now: datetime) -> Signal:
    """unpriced_policy='block': the session of an event nobody can price is killed."""
    sval = f"session={event.session_id}"
    return Signal(
        signal_id=signal_id(UNPRICED_POLICY_ID, sval, None, Action.KILL),
        session_id=event.session_id,
        action=Action.KILL,
        policy_id=UNPRICED_POLICY_ID,
        scope=(Scope.SESSION,),
        scope_value=sval,
        spent_tokens=event.total_tokens,
        spent_cost=ZERO,
        reason=f"unpriced model: {event.provider or '?'}/{event.model}",
        trigger_event_id=event.event_id,
        issued_at=now,
    )
