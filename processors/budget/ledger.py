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
    window_end,
    window_start,
)
from schemas.budgets import (
    Action,
    Alert,
    BudgetPolicy,
    OpeningBalance,
    Scope,
    Signal,
    TopSession,
    Window,
    scope_value_of,
)
from schemas.events import ADJUSTMENT, CALL_STARTED, CostEvent, PricedEvent

ZERO = Decimal(0)
ONE = Decimal(1)
DEFAULT_SESSION_POLICY_ID = "default-session-token-cap"
UNPRICED_POLICY_ID = "unpriced-model"

Attribution = Mapping[Scope, str | None]


_SESSION, _AGENT_TYPE, _TEAM, _PROJECT, _CUSTOMER = (
    Scope.SESSION, Scope.AGENT_TYPE, Scope.TEAM, Scope.PROJECT, Scope.CUSTOMER
)  # fmt: skip
"""The scopes as module names: an enum member read through its class costs a descriptor call."""


def attribution_of(event: CostEvent) -> dict[Scope, str | None]:
    return {
        _SESSION: event.session_id,
        _AGENT_TYPE: event.agent_type,
        _TEAM: event.team,
        _PROJECT: event.project,
        _CUSTOMER: event.customer,
    }


def scope_value(policy: BudgetPolicy, attribution: Attribution) -> str | None:
    """`session=abc` or `team=t1|agent_type=x` if the policy covers the event, else None."""
    for dim, wanted in policy.match.items():
        if attribution.get(dim) != wanted:
            return None
    return scope_value_of(policy.scope, attribution)


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


@dataclass(slots=True)
class Usage:
    """What one event does to the budgets covering it.

    `tokens`/`cost` are spend. A `call_started` reserves its estimate under `reserve` (its
    event id) until `expires_at_s`; the event that settles or aborts it names it in `release`.
    Not frozen, though nothing changes one: the worker makes one per event, and a frozen
    dataclass sets each field through `object.__setattr__` (`usage_of` 1.6 µs frozen).
    """

    tokens: int = 0
    cost: Decimal = ZERO
    reserve: str | None = None
    reserve_tokens: int = 0
    reserve_cost: Decimal = ZERO
    expires_at_s: float = 0.0
    release: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": self.tokens, "c": str(self.cost)}
        if self.reserve is not None:
            out |= {"r": self.reserve, "rt": self.reserve_tokens, "rc": str(self.reserve_cost), "x": self.expires_at_s}
        if self.release is not None:
            out["rel"] = self.release
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Usage:
        return cls(
            tokens=int(data.get("t", 0)),
            cost=Decimal(data.get("c", "0")),
            reserve=data.get("r"),
            reserve_tokens=int(data.get("rt", 0)),
            reserve_cost=Decimal(data.get("rc", "0")),
            expires_at_s=float(data.get("x", 0.0)),
            release=data.get("rel"),
        )


def estimated_tokens(event: CostEvent) -> int:
    """A call_started's token estimate: its input plus the most output it may produce."""
    output = max(event.output_tokens, event.max_output_tokens or 0)
    return event.input_tokens + event.cache_read_tokens + event.cache_write_tokens + output


def usage_of(priced: PricedEvent, now_s: float = 0.0, reservation_timeout_s: float = 600.0) -> Usage | None:
    """What an event adds to the budgets: spend, a reservation, or the settlement of one."""
    event = priced.event
    kind = event.kind
    if kind is CALL_STARTED:
        return Usage(
            reserve=event.event_id,
            reserve_tokens=estimated_tokens(event),
            reserve_cost=max(priced.cost, ZERO),
            expires_at_s=now_s + reservation_timeout_s,
        )
    if kind is ADJUSTMENT:
        return Usage(cost=priced.cost)
    # llm_call / tool_call naming a call_started settle it; call_aborted releases it (and charges
    # whatever it consumed)
    return Usage(tokens=event.total_tokens, cost=priced.cost, release=event.settles)


@dataclass
class BudgetState:
    tokens: int = 0
    cost: Decimal = ZERO
    buckets: dict[int, list[Any]] = field(default_factory=dict)
    """Rolling windows only: bucket index -> [tokens, cost]."""
    fired: dict[str, str] = field(default_factory=dict)
    """Alert threshold (as text), or `action` for the limit, -> the window tag it fired in."""
    reserved: dict[str, list[Any]] = field(default_factory=dict)
    """Open reservations: call_started event id -> [tokens, cost, expires_at_s]."""
    sessions: dict[str, list[Any]] = field(default_factory=dict)
    """Scopes wider than a session: session id -> [tokens, cost] spent in this state."""
    since: float | None = None
    """Seeded from an opening balance read at this time (epoch seconds): events processed
    before it may be in that balance, so this state ignores them (see `seed_states`)."""

    @property
    def reserved_tokens(self) -> int:
        return sum(int(r[0]) for r in self.reserved.values())

    @property
    def reserved_cost(self) -> Decimal:
        return sum((r[1] for r in self.reserved.values()), ZERO)

    def expire(self, now_s: float) -> bool:
        """Drop reservations past their expiry; True if any was dropped."""
        old = [rid for rid, r in self.reserved.items() if r[2] <= now_s]
        for rid in old:
            del self.reserved[rid]
        return bool(old)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tokens": self.tokens,
            "cost": str(self.cost),
            "buckets": {str(b): [t, str(c)] for b, (t, c) in self.buckets.items()} if self.buckets else {},
            "fired": dict(self.fired),
        }
        if self.reserved:
            out["reserved"] = {k: [t, str(c), x] for k, (t, c, x) in self.reserved.items()}
        if self.sessions:
            out["sessions"] = {k: [t, str(c)] for k, (t, c) in self.sessions.items()}
        if self.since is not None:
            out["since"] = self.since
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BudgetState:
        return cls(
            tokens=int(data.get("tokens", 0)),
            cost=Decimal(data.get("cost", "0")),
            buckets={int(b): [int(t), Decimal(c)] for b, (t, c) in data.get("buckets", {}).items()},
            fired=dict(data.get("fired", {})),
            reserved={k: [int(t), Decimal(c), float(x)] for k, (t, c, x) in data.get("reserved", {}).items()},
            sessions={k: [int(t), Decimal(c)] for k, (t, c) in data.get("sessions", {}).items()},
            since=None if data.get("since") is None else float(data["since"]),
        )


MAX_SESSIONS_PER_STATE = 1000
"""A scope budget remembers at most this many sessions (the biggest spenders stay)."""
ACTION_KEY = "action"


@dataclass(frozen=True, slots=True)
class Crossing:
    """A budget reached `threshold` of its limit.

    `limit` crossings are the policy's action (spend plus open reservations reached the limit)
    and go to `sessions`; the others are alerts (spend alone reached the threshold).
    """

    policy: BudgetPolicy
    scope_value: str
    window_start: datetime | None
    threshold: Decimal
    spent_tokens: int
    spent_cost: Decimal
    limit: bool = False
    reserved_tokens: int = 0
    reserved_cost: Decimal = ZERO
    sessions: tuple[str, ...] = ()
    top_sessions: tuple[tuple[str, int, Decimal], ...] = ()
    """Alerts: (session id, tokens, cost) of the biggest spenders, largest first."""
    step: Action | None = None
    """An escalation step before the limit (at `threshold`); None: the policy's action."""

    @property
    def at_limit(self) -> bool:
        return self.limit

    @property
    def action(self) -> Action:
        return self.step or self.policy.action

    @property
    def signal_id(self) -> str:
        return signal_id(self.policy.policy_id, self.scope_value, self.window_start, self.action)

    @property
    def alert_id(self) -> str:
        return alert_id(self.policy.policy_id, self.scope_value, self.window_start, self.threshold)


def alert_id(policy_id: str, scope_val: str, start: datetime | None, threshold: Decimal) -> str:
    """Deterministic: one alert per (policy, scope value, window, threshold), whoever computes it."""
    text = f"alert\x1f{policy_id}\x1f{scope_val}\x1f{_window_tag(start)}\x1f{threshold.normalize()}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _Mark:
    """A fraction of a policy's limit, as `record_scope` tests it: the key it fires under in
    `BudgetState.fired`, and the tokens or cost that reach it (fraction times limit, exact)."""

    fraction: Decimal
    key: str
    tokens: Decimal | None
    cost: Decimal | None
    step: Action | None = None

    def reached(self, tokens: int, cost: Decimal) -> bool:
        return (self.tokens is not None and tokens >= self.tokens) or (self.cost is not None and cost >= self.cost)


def _mark(policy: BudgetPolicy, fraction: Decimal, key: str, step: Action | None = None) -> _Mark:
    tokens = None if policy.limit_tokens is None else fraction * policy.limit_tokens
    cost = None if policy.limit_cost is None else fraction * policy.limit_cost
    return _Mark(fraction, key, tokens, cost, step)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What `record_scope` derives from a policy for every event, derived once per policy."""

    rolling: bool
    wide: bool
    """Scope wider than a session: the state keeps its sessions."""
    thresholds: tuple[_Mark, ...]
    """Alert thresholds, lowest first."""
    steps: tuple[_Mark, ...]
    """Escalation steps, lowest fraction first."""
    limit: _Mark


def _plan(policy: BudgetPolicy) -> _Plan:
    return _Plan(
        rolling=is_rolling(policy.window),
        wide=Scope.SESSION not in policy.scope,
        thresholds=tuple(_mark(policy, t, str(t)) for t in sorted(policy.thresholds)),
        steps=tuple(
            _mark(policy, fraction, f"{ACTION_KEY}:{step.value}", step)
            for step, fraction in sorted(policy.escalation.items(), key=lambda kv: kv[1])
        ),
        limit=_mark(policy, ONE, ACTION_KEY),
    )


def window_open(window: Window, at: datetime, now: datetime, timezone: str = "UTC") -> bool:
    """Whether a late event dated `at` still belongs to a window that is open at `now`."""
    if window is Window.LIFETIME:
        return True
    if is_rolling(window):
        return bucket_of(window, at) >= first_live_bucket(window, now)
    return window_start(window, at, timezone) == window_start(window, now, timezone)


class BudgetBook:
    """Spend per budget, for the events one worker owns (one partition's sessions, or more)."""

    def __init__(self, loader: Callable[[str], BudgetState | Mapping[str, Any] | None] | None = None) -> None:
        self.states: dict[str, BudgetState] = {}
        self.dirty: dict[str, Any] = {}
        """Changed keys since the last `take_dirty`, each with the caller's tag (e.g. a partition)."""
        self._loader = loader
        """Reads a state missing from memory (e.g. restored from a changelog): its JSON form, or
        a BudgetState the book may change in place (the loader's own parsed copy)."""
        self._plans: dict[str, tuple[BudgetPolicy, _Plan]] = {}
        """policy id -> the policy object last seen under it and its plan (a changed policy is a
        new object: its plan is made again)."""

    def _plan_of(self, policy: BudgetPolicy) -> _Plan:
        known = self._plans.get(policy.policy_id)
        if known is not None and known[0] is policy:
            return known[1]
        plan = _plan(policy)
        self._plans[policy.policy_id] = (policy, plan)
        return plan

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
            if isinstance(data, BudgetState):
                state = data
            else:
                state = BudgetState.from_json(data) if data is not None else BudgetState()
            self.states[key] = state
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
        """Add spend to every budget covering an event (no reservations); see `record`."""
        return self.record(policies, attribution, at, Usage(tokens=tokens, cost=cost), tag=tag)

    def record(
        self,
        policies: Iterable[BudgetPolicy],
        attribution: Attribution,
        at: datetime,
        usage: Usage,
        *,
        tag: Any = None,
        now: datetime | None = None,
        late: bool = False,
    ) -> list[Crossing]:
        """Apply one event's usage to every budget covering it; return the crossings it caused.

        `tag` is kept with each changed key until `take_dirty` (the worker passes the partition).
        `now` expires reservations (and, with `late`, skips windows already closed at `now`).
        """
        crossings: list[Crossing] = []
        session = attribution.get(_SESSION)
        for policy in policies:
            if not policy.enabled:
                continue
            sval = scope_value(policy, attribution)
            if sval is None:
                continue
            crossings += self.record_scope(policy, sval, at, usage, tag=tag, now=now, late=late, session_id=session)
        return crossings

    def record_scope(
        self,
        policy: BudgetPolicy,
        sval: str,
        at: datetime,
        usage: Usage,
        *,
        tag: Any = None,
        now: datetime | None = None,
        late: bool = False,
        session_id: str | None = None,
    ) -> list[Crossing]:
        """`record` for one policy and scope value already known to cover the event."""
        if late and now is not None and not window_open(policy.window, at, now, policy.timezone):
            return []
        plan = self._plan_of(policy)
        start = window_start(policy.window, at, policy.timezone)
        key = state_key(policy.policy_id, sval, start, policy.window)
        state = self._state(key)
        now_s = None if now is None else now.timestamp()
        if state.since is not None and now_s is not None and now_s < state.since:
            # processed before the opening balance was read: it may be counted in it already
            return []
        self.dirty[key] = tag
        if now_s is not None and state.reserved:
            state.expire(now_s)
        if usage.release is not None:
            state.reserved.pop(usage.release, None)
        if usage.reserve is not None:
            state.reserved[usage.reserve] = [usage.reserve_tokens, usage.reserve_cost, usage.expires_at_s]
        rolling = plan.rolling
        if rolling:
            spent_tokens, spent_cost, start = self._add_rolling(policy.window, state, at, usage.tokens, usage.cost)
        else:
            state.tokens += usage.tokens
            state.cost += usage.cost
            spent_tokens, spent_cost = state.tokens, state.cost
        wide = session_id is not None and plan.wide
        joined = False
        if wide:
            assert session_id is not None
            joined = session_id not in state.sessions
            slot = state.sessions.setdefault(session_id, [0, ZERO])
            slot[0] += usage.tokens
            slot[1] += usage.cost
            if len(state.sessions) > MAX_SESSIONS_PER_STATE:
                smallest = min((s for s in state.sessions if s != session_id), key=lambda s: state.sessions[s][1])
                del state.sessions[smallest]
        fired = state.fired
        out: list[Crossing] = []

        def crossing(threshold: Decimal, **extra: Any) -> Crossing:
            return Crossing(policy, sval, start, threshold, spent_tokens, spent_cost, **extra)

        for mark in plan.thresholds:
            if not mark.reached(spent_tokens, spent_cost):
                if rolling:
                    fired.pop(mark.key, None)  # spend slid back below: re-arm
                continue
            if mark.key in fired:
                continue
            fired[mark.key] = _window_tag(start)
            out.append(crossing(mark.fraction, top_sessions=self._top(state, session_id)))
        res_tokens, res_cost = (state.reserved_tokens, state.reserved_cost) if state.reserved else (0, ZERO)
        exposed_tokens, exposed_cost = spent_tokens + res_tokens, spent_cost + res_cost

        def limit_crossing(threshold: Decimal, sessions: tuple[str, ...], step: Action | None = None) -> Crossing:
            return crossing(
                threshold, sessions=sessions, step=step, limit=True, reserved_tokens=res_tokens, reserved_cost=res_cost
            )

        def everyone() -> tuple[str, ...]:
            return tuple(state.sessions) if wide else ((session_id,) if session_id else ())

        for mark in plan.steps:
            if not mark.reached(exposed_tokens, exposed_cost):
                if rolling:
                    fired.pop(mark.key, None)
            elif mark.key not in fired:
                fired[mark.key] = _window_tag(start)
                out.append(limit_crossing(mark.fraction, everyone(), mark.step))
        if not plan.limit.reached(exposed_tokens, exposed_cost):
            if rolling:
                fired.pop(ACTION_KEY, None)
        elif ACTION_KEY not in fired:
            fired[ACTION_KEY] = _window_tag(start)
            out.append(limit_crossing(ONE, everyone()))
        elif wide and joined:
            # a session that starts in a breached scope is refused at its first event
            assert session_id is not None
            out.append(limit_crossing(ONE, (session_id,)))
        return out

    @staticmethod
    def _top(state: BudgetState, session_id: str | None, n: int = 5) -> tuple[tuple[str, int, Decimal], ...]:
        if not state.sessions:
            return ((session_id, state.tokens, state.cost),) if session_id else ()
        ranked = sorted(state.sessions.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))[:n]
        return tuple((sid, int(t), c) for sid, (t, c) in ranked)

    @staticmethod
    def _add_rolling(
        window: Window, state: BudgetState, at: datetime, tokens: int, cost: Decimal
    ) -> tuple[int, Decimal, datetime]:
        bucket = bucket_of(window, at)
        newest = max([bucket, *state.buckets.keys()])
        oldest = first_live_bucket(window, bucket_start(window, newest))
        if bucket >= oldest and (tokens or cost):
            slot = state.buckets.setdefault(bucket, [0, ZERO])
            slot[0] += tokens
            slot[1] += cost
        for b in [b for b in state.buckets if b < oldest]:
            del state.buckets[b]
        spent_tokens = sum(t for t, _ in state.buckets.values())
        spent_cost = sum((c for _, c in state.buckets.values()), ZERO)
        state.tokens, state.cost = spent_tokens, spent_cost
        return spent_tokens, spent_cost, bucket_start(window, oldest)


def seed_states(policy: BudgetPolicy, balance: OpeningBalance) -> dict[str, BudgetState]:
    """The budget states an opening balance starts, by state key.

    A worker uses one only where that key has no state yet (so a restart, replay or rebalance,
    which restore the state from the changelog, never adds it twice), then counts events as
    usual; thresholds the balance already reached fire at the next event, once. The state
    remembers `as_of`: an event processed before it may be in the balance, so it is ignored
    (none is, when the policy is new: no worker applied it before `as_of`).
    """
    since = balance.as_of.timestamp()
    rolling = is_rolling(policy.window)
    wide = Scope.SESSION not in policy.scope
    out: dict[str, BudgetState] = {}
    for entry in balance.scopes:
        key = state_key(policy.policy_id, entry.scope_value, balance.window_start, policy.window)
        state = BudgetState(tokens=entry.tokens, cost=entry.cost, since=since)
        if rolling:
            state.buckets = {b: [t, c] for b, t, c in entry.buckets}
            state.tokens = sum(t for t, _ in state.buckets.values())
            state.cost = sum((c for _, c in state.buckets.values()), ZERO)
        if wide:
            state.sessions = {sid: [t, c] for sid, t, c in entry.sessions[:MAX_SESSIONS_PER_STATE]}
        out[key] = state
    return out


def make_signal(
    crossing: Crossing,
    *,
    session_id: str,
    now: datetime,
    trigger_event_id: str | None = None,
    model: str | None = None,
) -> Signal:
    """The policy's action for one session; spent figures include open reservations."""
    policy = crossing.policy
    action = crossing.action
    tokens = crossing.spent_tokens + crossing.reserved_tokens
    cost = crossing.spent_cost + crossing.reserved_cost
    what = []
    if policy.limit_tokens is not None:
        what.append(f"{tokens}/{policy.limit_tokens} tokens")
    if policy.limit_cost is not None:
        what.append(f"${cost}/${policy.limit_cost}")
    where = "reached" if crossing.step is None else f"at {crossing.threshold:%} of its limit"
    reason = f"budget {policy.policy_id} ({crossing.scope_value}, {policy.window.value}) {where}: " + ", ".join(what)
    if crossing.reserved_tokens or crossing.reserved_cost:
        reason += (
            f" (of which reserved by calls in flight: {crossing.reserved_tokens} tokens, ${crossing.reserved_cost})"
        )
    recommended = policy.downgrade_to.get(model) if model and action is Action.DOWNGRADE else None
    return Signal(
        signal_id=crossing.signal_id,
        session_id=session_id,
        action=action,
        policy_id=policy.policy_id,
        scope=policy.scope,
        scope_value=crossing.scope_value,
        window_start=crossing.window_start,
        limit_tokens=policy.limit_tokens,
        limit_cost=policy.limit_cost,
        spent_tokens=tokens,
        spent_cost=cost,
        reason=reason[:1024],
        recommended_model=recommended,
        trigger_event_id=trigger_event_id,
        issued_at=now,
        match=policy.match,
        window_end=window_end(policy.window, crossing.window_start, policy.timezone),
    )


def make_alert(crossing: Crossing, *, now: datetime) -> Alert:
    """The owners' alert for a threshold crossing; `alert_id` is the same on every replay."""
    policy = crossing.policy
    return Alert(
        alert_id=crossing.alert_id,
        policy_id=policy.policy_id,
        scope=policy.scope,
        scope_value=crossing.scope_value,
        window_start=crossing.window_start,
        threshold=crossing.threshold,
        spent_cost=crossing.spent_cost,
        spent_tokens=crossing.spent_tokens,
        limit_cost=policy.limit_cost,
        limit_tokens=policy.limit_tokens,
        top_sessions=tuple(
            TopSession(session_id=sid, spent_tokens=t, spent_cost=c) for sid, t, c in crossing.top_sessions
        ),
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
