"""Budget policies, the signals they send to agents, and each session's status.

Policies travel on the compacted `budget-policies` topic keyed by `policy_id` (a tombstone
deletes); signals on `signals` and the latest status per session on `session-status`, both
keyed by `session_id`.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Self

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator

from schemas.events import Money, Name, Strict, Tokens, UtcDatetime

PolicyId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class Scope(StrEnum):
    SESSION = "session"
    AGENT_TYPE = "agent_type"
    TEAM = "team"
    PROJECT = "project"
    CUSTOMER = "customer"


def scope_value_of(scope: tuple[Scope, ...], attribution: Mapping[Scope, str | None]) -> str | None:
    """The budget an event falls in for a policy's scope: `team=t1` or `team=t1|agent_type=x`;
    None if the event lacks one of the dimensions. The worker keys budgets by it; the hook
    compares it with a signal's `scope_value` to refuse new sessions of a breached scope."""
    parts = []
    for dim in scope:
        value = attribution.get(dim)
        if value is None:
            return None
        parts.append(f"{dim.value}={value}")
    return "|".join(parts)


class Window(StrEnum):
    LIFETIME = "lifetime"
    ROLLING_1H = "rolling_1h"
    ROLLING_24H = "rolling_24h"
    ROLLING_7D = "rolling_7d"
    ROLLING_30D = "rolling_30d"
    CALENDAR_DAY = "calendar_day"
    CALENDAR_WEEK = "calendar_week"
    CALENDAR_MONTH = "calendar_month"


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


class Action(StrEnum):
    """Graded: each action includes the milder ones before it."""

    WARN = "warn"
    DOWNGRADE = "downgrade"
    PAUSE = "pause"
    KILL = "kill"

    @property
    def rank(self) -> int:
        return list(Action).index(self)


class BudgetPolicy(Strict):
    """A limit on spend for every group of events that its scope and match select."""

    policy_id: PolicyId
    name: Annotated[str, StringConstraints(max_length=128)] = ""
    scope: Annotated[tuple[Scope, ...], Field(min_length=1, max_length=5)]
    """The dimensions that make one budget, e.g. (team, agent_type): one budget per pair."""
    match: Annotated[dict[Scope, Name], Field(max_length=5)] = Field(default_factory=dict)
    """Only events whose dimension equals the value; a dimension absent here matches `*`."""
    limit_tokens: Tokens | None = None
    limit_cost: Money | None = None
    window: Window = Window.LIFETIME
    timezone: Annotated[str, StringConstraints(max_length=64)] = "UTC"
    action: Action = Action.KILL
    thresholds: Annotated[tuple[Decimal, ...], Field(min_length=1, max_length=8)] = (
        Decimal("0.5"),
        Decimal("0.8"),
        Decimal("1"),
    )
    downgrade_to: Annotated[dict[Name, Name], Field(max_length=64)] = Field(default_factory=dict)
    """Routing map for `downgrade`: expensive model -> cheaper model."""
    escalation: Annotated[dict[Action, Decimal], Field(max_length=3)] = Field(default_factory=dict)
    """Milder actions before the limit, graded: action -> fraction of the limit (spend plus
    reservations) at which it is sent, e.g. `{"warn": 0.5, "downgrade": 0.8}`; `action` applies
    at the limit itself."""
    enabled: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        # an unknown zone would fail every window computation in the worker, not here
        if value not in _zones():
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Paris")
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.limit_tokens is None and self.limit_cost is None:
            raise ValueError("a policy needs limit_tokens, limit_cost or both")
        if len(set(self.scope)) != len(self.scope):
            raise ValueError("scope names a dimension twice")
        if any(not (Decimal(0) < t <= Decimal(1)) for t in self.thresholds):
            raise ValueError("thresholds are fractions in (0, 1]")
        steps = sorted(self.escalation.items(), key=lambda kv: kv[0].rank)
        if any(a.rank >= self.action.rank for a, _ in steps):
            raise ValueError("escalation lists only actions milder than the policy's action")
        fractions = [f for _, f in steps]
        if any(not (Decimal(0) < f < Decimal(1)) for f in fractions) or fractions != sorted(set(fractions)):
            raise ValueError("escalation fractions are in (0, 1) and rise with the action")
        return self


MAX_OPENING_SCOPES = 10_000
MAX_OPENING_BUCKETS = 720
"""A rolling window has at most 168 buckets (rolling_7d, of 1 h), and the balance reads at most
twice that (api.budget_status.opening_window): room to spare."""
MAX_OPENING_SESSIONS = 1000
"""Per scope value, as a worker's budget state keeps at most 1000 sessions."""

SpentTokens = Annotated[int, Field(ge=0, strict=True)]
Spent = Annotated[Decimal, Field(max_digits=38, decimal_places=12)]
"""A sum of many events' cost: adjustments may make it negative."""


class OpeningScope(Strict):
    """One scope value's settled spend in the window, from the warehouse."""

    scope_value: Annotated[str, StringConstraints(max_length=1024)]
    tokens: SpentTokens
    cost: Spent
    buckets: Annotated[tuple[tuple[int, SpentTokens, Spent], ...], Field(max_length=MAX_OPENING_BUCKETS)] = ()
    """Rolling windows: (bucket index as in processors.budget.windows.bucket_of, tokens, cost)."""
    sessions: Annotated[tuple[tuple[Name, SpentTokens, Spent], ...], Field(max_length=MAX_OPENING_SESSIONS)] = ()
    """Scopes wider than a session: its biggest sessions (id, tokens, cost), largest first."""


class OpeningBalance(Strict):
    """The spend a policy finds already made in its window when it is created or replaced.

    Workers seed a budget state from it only when that state does not exist yet, and a state
    seeded from it ignores events they processed before `as_of` (those may be in it already)."""

    as_of: UtcDatetime
    """When the warehouse was read: it holds what the sink had written by then."""
    window_start: UtcDatetime | None = None
    """The calendar window's start (None: lifetime); rolling windows carry buckets instead."""
    scopes: Annotated[tuple[OpeningScope, ...], Field(max_length=MAX_OPENING_SCOPES)] = ()
    omitted_scopes: Annotated[int, Field(ge=0)] = 0
    """Scope values left out to keep the record under the message size limit (the smallest
    spenders): their budgets start at zero."""
    omitted_sessions: Annotated[int, Field(ge=0)] = 0
    """Sessions left out of the kept scopes' lists (the smallest): a breach does not signal them
    at once; each is refused at its next event instead."""


class PolicyRecord(BudgetPolicy):
    """What `budget-policies` carries: the policy, and the opening balance computed when it was
    written (absent when none was asked for, none could be computed, or nothing was spent)."""

    opening_balance: OpeningBalance | None = None


def split_record(record: PolicyRecord) -> tuple[BudgetPolicy, OpeningBalance | None]:
    """The policy alone (what the API shows and budgets use), and its opening balance."""
    fields = record.model_dump(exclude={"opening_balance"}, exclude_unset=True)
    return BudgetPolicy.model_validate(fields), record.opening_balance


class SessionState(StrEnum):
    ACTIVE = "active"
    WARNED = "warned"
    DOWNGRADED = "downgraded"
    PAUSED = "paused"
    KILLED = "killed"


class Outbound(Strict):
    """What workers send to agents: an agent's hook may be older than the worker, so fields it
    does not know are ignored rather than making the whole message unreadable."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Signal(Outbound):
    """What a processor tells one session; idempotent by `signal_id` (policy, scope value, window)."""

    signal_id: Annotated[str, StringConstraints(max_length=256)]
    session_id: Name
    action: Action
    policy_id: PolicyId
    scope: tuple[Scope, ...]
    scope_value: Annotated[str, StringConstraints(max_length=1024)]
    window_start: UtcDatetime | None = None
    limit_tokens: Tokens | None = None
    limit_cost: Money | None = None
    spent_tokens: int
    spent_cost: Decimal
    reason: Annotated[str, StringConstraints(max_length=1024)]
    recommended_model: Name | None = None
    trigger_event_id: str | None = None
    issued_at: UtcDatetime
    match: Annotated[dict[Scope, Name], Field(max_length=5)] = Field(default_factory=dict)
    """The policy's match: with `scope` and `scope_value`, which sessions the breach covers."""
    window_end: UtcDatetime | None = None
    """When a breach of a budget wider than the session may lift: the end of the calendar
    period, or when the oldest counted bucket of a rolling window slides out; None for a
    lifetime budget. Until then the hook refuses new sessions of the scope at their first call."""


class SessionStatus(Outbound):
    """The latest standing of one session, compacted by session id."""

    session_id: Name
    state: SessionState
    signal: Signal | None = None
    updated_at: UtcDatetime


class TopSession(Strict):
    """One of the sessions that spent most in an alert's scope and window."""

    session_id: Name
    spent_cost: Decimal
    spent_tokens: int


class Alert(Strict):
    """A policy's threshold crossed in one window, for owners; exactly one per
    (policy, scope value, window, threshold), identified by `alert_id`. Key: policy id."""

    alert_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    policy_id: PolicyId
    scope: tuple[Scope, ...]
    scope_value: Annotated[str, StringConstraints(max_length=1024)]
    """`team=t1|agent_type=x`, as in signals."""
    window_start: UtcDatetime | None = None
    threshold: Annotated[Decimal, Field(gt=0, le=1)]
    spent_cost: Decimal
    spent_tokens: int
    limit_cost: Money | None = None
    limit_tokens: Tokens | None = None
    top_sessions: Annotated[tuple[TopSession, ...], Field(max_length=20)] = ()
    issued_at: UtcDatetime
