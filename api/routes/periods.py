"""/v1/periods: close a billing month, list closes, and a month's chargeback by billing period.

After `POST /v1/periods/2026-10/close` the report of 2026-10 never changes: events for it
that arrive later are charged in the first open month after it (`carried_over_*` columns
there). See `api.periods` for the rule. Closing needs an unrestricted admin key: a close
applies to every team.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from api.auth import require, require_unrestricted_admin
from api.keys import ApiKey
from api.money import EXPONENT as CENT_EXPONENT
from api.money import MoneyText
from api.periods import (
    PERIOD_DIMENSIONS,
    PeriodClose,
    close_period,
    list_closes,
    parse_period,
    period_report_query,
)
from api.queries import MONEY_MEASURES, TOKEN_MEASURES, parse_group_by
from api.reports import focus
from api.reports.export import frame, to_csv, to_parquet
from api.routes.chargeback import FILE_RESPONSES, file_response, strict_query

router = APIRouter(prefix="/v1/periods", tags=["periods"])

PeriodPath = Annotated[str, Path(description="A month, YYYY-MM", min_length=7, max_length=7)]


class PeriodClosePublic(BaseModel):
    period: str
    closed_at: datetime
    closed_by: str


class PeriodList(BaseModel):
    closed: list[PeriodClosePublic]


class PeriodTotals(BaseModel):
    cost: MoneyText
    list_cost: MoneyText
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    calls: int
    carried_over_cost: MoneyText = Field(description="Events of earlier, closed months charged in this one")
    carried_over_calls: int
    adjustment_cost: MoneyText = Field(description="Adjustment events (re-pricing, corrections)")


class PeriodRow(PeriodTotals):
    group: dict[str, Any]


class PeriodReport(BaseModel):
    period: str
    closed: bool
    closed_at: datetime | None
    group_by: list[str]
    rows: list[PeriodRow]
    total: PeriodTotals


_MONEY = (*MONEY_MEASURES, "carried_over_cost", "adjustment_cost")
_COUNTS = (*TOKEN_MEASURES, "calls", "carried_over_calls")


def _public(close: PeriodClose) -> PeriodClosePublic:
    return PeriodClosePublic(period=f"{close.period:%Y-%m}", closed_at=close.closed_at, closed_by=close.closed_by)


def _totals(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {m: Decimal(row[m]).quantize(CENT_EXPONENT) for m in _MONEY}
    out.update({c: int(row[c]) for c in _COUNTS})
    return out


@router.get("", response_model=PeriodList, summary="Closed billing periods")
def periods(request: Request, _key: Annotated[ApiKey, Depends(require("reports:read"))]) -> PeriodList:
    state = request.app.state
    return PeriodList(closed=[_public(c) for c in list_closes(state.warehouse, state.settings.database)])


@router.post(
    "/{period}/close",
    response_model=PeriodClosePublic,
    status_code=201,
    summary="Close a month (201; 200 when it was already closed)",
)
def close(
    request: Request,
    period: PeriodPath,
    response: Response,
    key: Annotated[ApiKey, Depends(require_unrestricted_admin)],
) -> PeriodClosePublic:
    month = parse_period(period)
    state = request.app.state
    result, closed_now = close_period(state.warehouse, state.settings.database, month, closed_by=f"key:{key.key_id}")
    response.status_code = 201 if closed_now else 200
    return _public(result)


def build_period_report(
    warehouse: Any, database: str, month: date, group_by: tuple[str, ...], team: str | None
) -> PeriodReport:
    closes = list_closes(warehouse, database)
    sql, params = period_report_query(database, month, closes, group_by, {"team": team} if team else None)
    # without group_by an empty month still gives one row, of zeros: not a row of the report
    found = [r for r in warehouse.query(sql, params) if group_by or r["events"]]
    rows = [PeriodRow(group={g: r[g] for g in group_by}, **_totals(r)) for r in found]
    sums: dict[str, Any] = {m: sum((getattr(r, m) for r in rows), Decimal(0)).quantize(CENT_EXPONENT) for m in _MONEY}
    sums.update({c: sum(getattr(r, c) for r in rows) for c in _COUNTS})
    closed_at = next((c.closed_at for c in closes if c.period == month), None)
    return PeriodReport(
        period=f"{month:%Y-%m}",
        closed=closed_at is not None,
        closed_at=closed_at,
        group_by=list(group_by),
        rows=rows,
        total=PeriodTotals(**sums),
    )


def focus_period_export(warehouse: Any, database: str, month: date, team: str | None, fmt: str) -> Response:
    """A billing period as FOCUS 1.2: its rows billed in `month`, carried-over rows of closed
    months as `Correction`s, adjustment events as `Adjustment`s."""
    closes = list_closes(warehouse, database)
    sql, params = period_report_query(database, month, closes, focus.PERIOD_GROUP_BY, {"team": team} if team else None)
    rows = focus.focus_rows(warehouse.query(sql, params), billing_period=month)
    df = frame(rows, focus.COLUMNS)
    name = f"focus-1.2-{month:%Y-%m}"
    if fmt == "focus":
        return file_response(to_csv(df), "focus", name)
    return file_response(to_parquet(df, focus.arrow_types()), "focus_parquet", name)


@router.get(
    "/{period}/report",
    response_model=PeriodReport,
    summary="Chargeback of one billing period (JSON, or FOCUS 1.2 as CSV or Parquet)",
    responses=FILE_RESPONSES,
    dependencies=[Depends(strict_query("group_by", "format"))],
)
def report(
    request: Request,
    period: PeriodPath,
    key: Annotated[ApiKey, Depends(require("reports:read"))],
    group_by: Annotated[str, Query(description=f"Comma-separated, from: {', '.join(PERIOD_DIMENSIONS)}")] = "team",
    format: Annotated[
        Literal["json", "focus", "focus_parquet"], Query(description="json, focus (CSV) or focus_parquet")
    ] = "json",
) -> Any:
    month = parse_period(period)
    dims = parse_group_by(group_by, PERIOD_DIMENSIONS)
    state = request.app.state
    # a team key reads its team's rows only: a bound filter, whatever the query asks
    if format != "json":
        return focus_period_export(state.warehouse, state.settings.database, month, key.team, format)
    return build_period_report(state.warehouse, state.settings.database, month, dims, key.team)
