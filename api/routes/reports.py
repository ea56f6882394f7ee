"""Ready-made reports under /v1/reports: top sessions by spend, spend by model, daily trend,
and one session's events. Same filters, period and team restriction as /v1/chargeback;
per-session budget status and the stopping signal are served by /v1/sessions/{id}."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel

from api.auth import require
from api.errors import NotFound
from api.keys import ApiKey
from api.money import money
from api.queries import flagged_events_queries, report_query, session_events_query
from api.routes.chargeback import (
    FILTER_NAMES,
    NAME_PATTERN,
    ChargebackReport,
    ChargebackRow,
    ChargebackTotals,
    Filters,
    MoneyText,
    build_report,
    filters_dependency,
    period,
    restricted,
    strict_query,
    sum_totals,
    totals,
)

router = APIRouter(prefix="/v1/reports", tags=["reports"])

PERIOD_PARAMS = ("from", "to", *FILTER_NAMES)
From = Annotated[datetime | None, Query(alias="from", description="ISO datetime, inclusive")]
To = Annotated[datetime | None, Query(alias="to", description="ISO datetime, exclusive")]


def _report(
    request: Request,
    key: ApiKey,
    filters: Filters,
    group_by: tuple[str, ...],
    start: datetime | None,
    end: datetime | None,
    **options: Any,
) -> ChargebackReport:
    start, end = period(start, end)
    state = request.app.state
    where = restricted(key, filters.as_dict())
    return build_report(state.warehouse, state.settings.database, group_by, start, end, where, **options)


@router.get(
    "/top-sessions",
    response_model=ChargebackReport,
    response_model_by_alias=True,
    summary="Sessions by spend, highest first",
    dependencies=[Depends(strict_query(*PERIOD_PARAMS, "limit"))],
)
def top_sessions(
    request: Request,
    key: Annotated[ApiKey, Depends(require("reports:read"))],
    filters: Annotated[Filters, Depends(filters_dependency)],
    start: From = None,
    end: To = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> ChargebackReport:
    start, end = period(start, end)
    state = request.app.state
    where = restricted(key, filters.as_dict())
    sql, params, source = report_query(
        state.settings.database, ("session_id",), start, end, where, order_by_cost=True, limit=limit
    )
    rows = [
        ChargebackRow(group={"session_id": r["session_id"]}, **totals(r)) for r in state.warehouse.query(sql, params)
    ]
    return ChargebackReport(
        group_by=["session_id"], start=start, end=end, source=source, rows=rows, total=sum_totals(rows)
    )


@router.get(
    "/spend-by-model",
    response_model=ChargebackReport,
    response_model_by_alias=True,
    summary="Spend by provider and model",
    dependencies=[Depends(strict_query(*PERIOD_PARAMS))],
)
def spend_by_model(
    request: Request,
    key: Annotated[ApiKey, Depends(require("reports:read"))],
    filters: Annotated[Filters, Depends(filters_dependency)],
    start: From = None,
    end: To = None,
) -> ChargebackReport:
    return _report(request, key, filters, ("provider", "model"), start, end)


@router.get(
    "/daily-trend",
    response_model=ChargebackReport,
    response_model_by_alias=True,
    summary="Spend per UTC day",
    dependencies=[Depends(strict_query(*PERIOD_PARAMS))],
)
def daily_trend(
    request: Request,
    key: Annotated[ApiKey, Depends(require("reports:read"))],
    filters: Annotated[Filters, Depends(filters_dependency)],
    start: From = None,
    end: To = None,
) -> ChargebackReport:
    return _report(request, key, filters, ("day",), start, end)


class SessionEvent(BaseModel):
    event_id: str
    kind: str
    occurred_at: datetime
    workflow_id: str
    step: int
    step_name: str
    agent_type: str
    team: str | None
    project: str | None
    customer: str | None
    provider: str | None
    model: str | None
    tool_name: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost: MoneyText
    list_cost: MoneyText
    currency: str
    price_version: str
    unpriced: bool


class SessionDetail(BaseModel):
    session_id: str
    events: list[SessionEvent]
    total: ChargebackTotals
    """Charged events only: reservations (call_started) are listed but not counted."""


@router.get(
    "/sessions/{session_id}",
    response_model=SessionDetail,
    summary="One session's events (reservations included, marked by kind) and its charged total",
    dependencies=[Depends(strict_query())],
)
def session_detail(
    request: Request,
    key: Annotated[ApiKey, Depends(require("reports:read"))],
    session_id: Annotated[str, Path(min_length=1, max_length=128, pattern=NAME_PATTERN)],
) -> SessionDetail:
    state = request.app.state
    sql, params = session_events_query(state.settings.database, session_id, restricted(key, {}))
    rows = state.warehouse.query(sql, params)
    if not rows:
        # A team key gets the same 404 for another team's session as for none: nothing leaks.
        raise NotFound(f"no events for session {session_id!r}", field="session_id")
    events = [SessionEvent(**{**r, "event_id": r["event_id"].rstrip("\x00")}) for r in rows]
    charged = [r for r in rows if r["kind"] != "call_started"]
    sums: dict[str, Any] = {
        "cost": sum((Decimal(r["cost"]) for r in charged), Decimal(0)),
        "list_cost": sum((Decimal(r["list_cost"]) for r in charged), Decimal(0)),
        "calls": sum(1 for r in charged if r["kind"] in ("llm_call", "tool_call")),
    }
    for t in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
        sums[t] = sum(int(r[t]) for r in charged)
    return SessionDetail(session_id=session_id, events=events, total=ChargebackTotals(**totals(sums)))


class FlaggedCount(BaseModel):
    events: int
    cost: MoneyText


class FlaggedEvents(BaseModel):
    unpriced: FlaggedCount
    """Charged a fallback rate: the model had no price."""
    late: FlaggedCount
    """Arrived after the grace period: charged, but only in budget windows still open."""
    clamped: FlaggedCount
    """Dated too far in the future: charged at the time they were received."""


@router.get(
    "/flagged",
    response_model=FlaggedEvents,
    summary="Unpriced, late and clamped events over a period (same filters and team restriction)",
    dependencies=[Depends(strict_query(*PERIOD_PARAMS))],
)
def flagged(
    request: Request,
    key: Annotated[ApiKey, Depends(require("reports:read"))],
    filters: Annotated[Filters, Depends(filters_dependency)],
    start: From = None,
    end: To = None,
) -> FlaggedEvents:
    start, end = period(start, end)
    state = request.app.state
    where = restricted(key, filters.as_dict())
    unpriced_q, flags_q = flagged_events_queries(state.settings.database, start, end, where)
    [unpriced] = state.warehouse.query(*unpriced_q)
    [flags] = state.warehouse.query(*flags_q)
    return FlaggedEvents(
        unpriced=FlaggedCount(events=int(unpriced["unpriced_events"]), cost=money(unpriced["unpriced_cost"])),
        late=FlaggedCount(events=int(flags["late_events"]), cost=money(flags["late_cost"])),
        clamped=FlaggedCount(events=int(flags["clamped_events"]), cost=money(flags["clamped_cost"])),
    )
