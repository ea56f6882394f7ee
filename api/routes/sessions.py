"""/v1/sessions: each session's status, spend, and the signal that stopped it.

Spend is the settled spend (reservations excluded) from `priced_events`, counted once per
event_id; status and signals come from the `session_status` and `signals` tables that the
status sink fills. A key restricted to a team sees a session only if the session has events
of its team, and then only that team's spend; any other session is 404 to it, exactly like
a session that does not exist, so session ids of other teams do not leak.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel

from api.admin_queries import (
    SESSION_STATES,
    session_signals_query,
    session_spend_query,
    session_status_query,
    sessions_query,
)
from api.auth import require
from api.budget_status import SCOPE_COLUMN, session_attribution_query, spend_query, spent_tokens, used_fraction
from api.errors import Forbidden, InvalidParameter, NotFound
from api.keys import ApiKey
from api.money import EXPONENT as CENT_EXPONENT
from api.money import MoneyText, money
from api.routes.budgets import policy_cache_of, visible_to
from processors.budget.ledger import scope_value
from schemas.budgets import BudgetPolicy, Scope, Signal

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

SessionIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[\x21-\x7e][\x20-\x7e]*$")]


class SignalPublic(BaseModel):
    signal_id: str
    action: str
    policy_id: str
    scope: list[str]
    scope_value: str
    window_start: datetime | None
    limit_tokens: int | None
    limit_cost: MoneyText | None
    spent_tokens: int
    spent_cost: MoneyText
    reason: str
    recommended_model: str | None
    trigger_event_id: str | None
    issued_at: datetime


class SessionPublic(BaseModel):
    session_id: str
    state: str
    status_updated_at: datetime | None
    teams: list[str]
    calls: int
    cost: MoneyText
    list_cost: MoneyText
    input_tokens: int
    output_tokens: int
    first_event_at: datetime | None
    last_event_at: datetime | None
    stopped_by: SignalPublic | None
    signals: list[SignalPublic]


class SessionSummary(BaseModel):
    session_id: str
    state: str
    calls: int
    cost: MoneyText
    last_event_at: datetime | None
    status_updated_at: datetime | None


class SessionBudget(BaseModel):
    policy: BudgetPolicy
    scope_value: str
    window_start: datetime | None
    spent_cost: MoneyText
    spent_tokens: int
    fraction: Decimal


class SessionBudgets(BaseModel):
    session_id: str
    attribution: dict[str, str | None]
    as_of: datetime
    budgets: list[SessionBudget]
    """Every policy the key may see that covers the session: settled spend of the session's
    scope value (its session, team, ...) in the policy's current window."""


class SessionList(BaseModel):
    sessions: list[SessionSummary]
    limit: int
    offset: int


def _money(value: Any) -> Decimal:
    return Decimal(value or 0).quantize(CENT_EXPONENT)


def _signal(row: dict[str, Any]) -> SignalPublic:
    values = dict(row)
    values["limit_cost"] = _money(row["limit_cost"]) if row["limit_cost"] is not None else None
    values["spent_cost"] = _money(row["spent_cost"])
    return SignalPublic(**values)


def _stopped_by(signal_json: str) -> SignalPublic | None:
    if not signal_json:
        return None
    signal = Signal.model_validate_json(signal_json)
    return SignalPublic(
        **signal.model_dump(exclude={"scope", "action", "limit_cost", "spent_cost", "session_id"}),
        action=signal.action.value,
        scope=[s.value for s in signal.scope],
        limit_cost=_money(signal.limit_cost) if signal.limit_cost is not None else None,
        spent_cost=_money(signal.spent_cost),
    )


@router.get("/{session_id}", response_model=SessionPublic, summary="A session's status, spend and signals")
def get_session(
    request: Request, session_id: SessionIdPath, key: Annotated[ApiKey, Depends(require("reports:read"))]
) -> SessionPublic:
    state = request.app.state
    wh, db = state.warehouse, state.settings.database
    spend = wh.query(*session_spend_query(db, session_id, key.team))[0]
    events = int(spend["events"])
    statuses = [] if key.team is not None and events == 0 else wh.query(*session_status_query(db, session_id))
    if events == 0 and not statuses:
        raise NotFound(f"no session {session_id!r}", field="session_id")
    status = statuses[0] if statuses else None
    stopped = None
    if status is not None and status["state"] in ("paused", "killed"):
        stopped = _stopped_by(status["signal"])
    signals = [_signal(r) for r in wh.query(*session_signals_query(db, session_id))]
    return SessionPublic(
        session_id=session_id,
        state=status["state"] if status is not None else "active",
        status_updated_at=status["updated_at"] if status is not None else None,
        teams=[t for t in spend["teams"] if t is not None],
        calls=int(spend["calls"]),
        cost=_money(spend["cost"]),
        list_cost=_money(spend["list_cost"]),
        input_tokens=int(spend["input_tokens"]),
        output_tokens=int(spend["output_tokens"]),
        first_event_at=spend["first_event_at"] if events else None,
        last_event_at=spend["last_event_at"] if events else None,
        stopped_by=stopped,
        signals=signals,
    )


@router.get("", response_model=SessionList, summary="Sessions by spend, filtered by state and team")
def list_sessions(
    request: Request,
    key: Annotated[ApiKey, Depends(require("reports:read"))],
    state: Annotated[str | None, Query(description=f"One of: {', '.join(SESSION_STATES)}")] = None,
    team: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    agent_type: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> SessionList:
    if state is not None and state not in SESSION_STATES:
        raise InvalidParameter(f"unknown state {state[:40]!r}; allowed: {', '.join(SESSION_STATES)}", field="state")
    if key.team is not None:
        if team is not None and team != key.team:
            raise Forbidden(f"the key is restricted to team {key.team!r}", field="team")
        team = key.team
    db = request.app.state.settings.database
    rows = request.app.state.warehouse.query(
        *sessions_query(db, team=team, state=state, limit=limit, offset=offset, agent_type=agent_type)
    )
    sessions = [
        SessionSummary(
            session_id=r["session_id"],
            state=r["state"],
            calls=int(r["calls"] or 0),
            cost=_money(r["cost"]),
            last_event_at=r["last_event_at"],
            status_updated_at=r["status_updated_at"],
        )
        for r in rows
    ]
    return SessionList(sessions=sessions, limit=limit, offset=offset)


@router.get(
    "/{session_id}/budgets",
    response_model=SessionBudgets,
    summary="The budgets covering a session, with the spend of its scope value in each current window",
)
def session_budgets(
    request: Request, session_id: SessionIdPath, key: Annotated[ApiKey, Depends(require("reports:read"))]
) -> SessionBudgets:
    state = request.app.state
    wh, db = state.warehouse, state.settings.database
    found = wh.query(*session_attribution_query(db, session_id, key.team))
    if not found:
        raise NotFound(f"no session {session_id!r}", field="session_id")
    attribution: dict[Scope, str | None] = {dim: found[0].get(col) for dim, col in SCOPE_COLUMN.items()}
    attribution[Scope.SESSION] = session_id
    now = datetime.now(UTC)
    budgets = []
    for policy in policy_cache_of(request).policies():
        if not policy.enabled or not visible_to(policy, key):
            continue
        value = scope_value(policy, attribution)
        if value is None:
            continue
        within = {SCOPE_COLUMN[dim]: attribution[dim] for dim in policy.scope}
        query = spend_query(db, policy, now, {k: v for k, v in within.items() if v is not None}, limit=1)
        if query is None:
            continue
        rows = wh.query(query.sql, query.params)
        cost = money(rows[0]["cost"]) if rows else money(0)
        tokens = spent_tokens(rows[0]) if rows else 0
        budgets.append(SessionBudget(policy=policy, scope_value=value, window_start=query.window_start,
                                     spent_cost=cost, spent_tokens=tokens,
                                     fraction=used_fraction(policy, cost, tokens)))  # fmt: skip
    return SessionBudgets(
        session_id=session_id,
        attribution={dim.value: v for dim, v in attribution.items()},
        as_of=now,
        budgets=budgets,
    )
