"""GET /v1/chargeback: cost by allow-listed dimensions over a period of event time."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field, PlainSerializer

from api.auth import require
from api.errors import InvalidParameter
from api.keys import ApiKey
from api.queries import DIMENSIONS, MONEY_MEASURES, TOKEN_MEASURES, chargeback_query, parse_group_by
from api.warehouse import Warehouse

router = APIRouter(prefix="/v1", tags=["reports"])

CENT_EXPONENT = Decimal("0.000000000001")
"""Money leaves the API with the warehouse's 12 decimal places, the same text on every backend."""


MoneyText = Annotated[Decimal, PlainSerializer(lambda v: format(v, "f"), return_type=str, when_used="json")]
"""Decimal money as fixed-point text: never a float, never exponent notation ('0E-12')."""


class ChargebackTotals(BaseModel):
    cost: MoneyText
    list_cost: MoneyText
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    calls: int


class ChargebackRow(ChargebackTotals):
    group: dict[str, Any] = Field(description="The value of each group_by dimension (null: unattributed)")


class ChargebackReport(BaseModel):
    group_by: list[str]
    start: datetime | None = Field(serialization_alias="from")
    end: datetime | None = Field(serialization_alias="to")
    rows: list[ChargebackRow]
    total: ChargebackTotals


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _totals(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {m: Decimal(row[m]).quantize(CENT_EXPONENT) for m in MONEY_MEASURES}
    out.update({t: int(row[t]) for t in (*TOKEN_MEASURES, "calls")})
    return out


def build_report(
    warehouse: Warehouse,
    database: str,
    group_by: tuple[str, ...],
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, str] | None = None,
) -> ChargebackReport:
    sql, params = chargeback_query(database, group_by, start, end, filters)
    rows = warehouse.query(sql, params)
    report_rows = [ChargebackRow(group={g: row[g] for g in group_by}, **_totals(row)) for row in rows]
    # The grand total is the exact Decimal sum of the group rows: it adds up to the cent by construction.
    sums: dict[str, Any] = {
        m: sum((getattr(r, m) for r in report_rows), Decimal(0)).quantize(CENT_EXPONENT) for m in MONEY_MEASURES
    }
    sums.update({t: sum(getattr(r, t) for r in report_rows) for t in (*TOKEN_MEASURES, "calls")})
    total = ChargebackTotals(**sums)
    return ChargebackReport(group_by=list(group_by), start=start, end=end, rows=report_rows, total=total)


@router.get(
    "/chargeback",
    response_model=ChargebackReport,
    response_model_by_alias=True,
    summary="Chargeback by team, project, customer, ... over [from, to)",
)
def chargeback(
    request: Request,
    key: Annotated[ApiKey, Depends(require("reports:read"))],
    group_by: Annotated[str, Query(description=f"Comma-separated, from: {', '.join(DIMENSIONS)}")] = "team",
    start: Annotated[datetime | None, Query(alias="from", description="ISO datetime, inclusive")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="ISO datetime, exclusive")] = None,
) -> ChargebackReport:
    dims = parse_group_by(group_by)
    start, end = _utc(start), _utc(end)
    if start is not None and end is not None and end <= start:
        raise InvalidParameter("'to' must be after 'from'", field="to")
    state = request.app.state
    # A team key reads its team's rows only, whatever the query asks: a bound filter.
    filters = {"team": key.team} if key.team is not None else None
    return build_report(state.warehouse, state.settings.database, dims, start, end, filters)
