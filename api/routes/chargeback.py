"""GET /v1/chargeback: cost by allow-listed dimensions over a period of event time.

Parameters (all validated; an unknown or repeated query parameter is a 422):

- `group_by`: comma-separated from team, project, customer, agent_type, model, provider,
  tool_name, session_id, hour, day, week, month (UTC; weeks start on Monday).
- `from` / `to`: ISO datetimes, [from, to); naive means UTC.
- filters: `team=payments&model=gpt-4o` (one bound equality per dimension, values as in
  events: 1-128 printable ASCII characters). A team key is restricted to its team: asking for
  another team is a 403.
- `unallocated=report|proportional|even` with `allocate_by=team|project|customer|agent_type`
  (which must be in group_by): rows with no value reported as unallocated, or distributed
  (api.reports.allocation: exact to 1e-12).
- `format=json|csv|parquet|focus|focus_parquet`, or an Accept header (text/csv,
  application/vnd.apache.parquet); `format` wins.

Served from the daily rollup when the period is whole UTC days, the hourly one for whole
hours, the ledger otherwise and for session_id; the JSON says which (`source`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, PlainSerializer, SerializerFunctionWrapHandler, model_serializer

from api.auth import require
from api.errors import Forbidden, InvalidParameter
from api.keys import ApiKey
from api.queries import (
    ATTRIBUTES,
    MONEY_MEASURES,
    REPORT_DIMENSIONS,
    TOKEN_MEASURES,
    parse_report_group_by,
    report_query,
    to_utc,
)
from api.reports import focus
from api.reports.allocation import ALLOCATABLE, AllocationError, Mode, allocate
from api.reports.export import frame, to_csv, to_parquet
from api.warehouse import Row, Warehouse

router = APIRouter(prefix="/v1", tags=["reports"])

CENT_EXPONENT = Decimal("0.000000000001")
"""Money leaves the API with the warehouse's 12 decimal places, the same text on every backend."""

NAME_PATTERN = r"^[\x21-\x7e][\x20-\x7e]{0,127}$"
"""A filter value: what the event contract allows in a name (printable ASCII, 1-128)."""

MoneyText = Annotated[Decimal, PlainSerializer(lambda v: format(v, "f"), return_type=str, when_used="json")]
"""Decimal money as fixed-point text: never a float, never exponent notation ('0E-12')."""

Format = Literal["json", "csv", "parquet", "focus", "focus_parquet"]
CSV_TYPE = "text/csv; charset=utf-8"
PARQUET_TYPE = "application/vnd.apache.parquet"
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            PARQUET_TYPE: {"schema": {"type": "string", "format": "binary"}},
        }
    }
}


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
    allocation: Literal["direct", "unallocated"] | None = Field(
        default=None, description="With allocate_by in group_by: whether the row has a value in it"
    )
    allocated_cost: MoneyText | None = Field(default=None, description="The part of cost distributed to this row")
    allocated_list_cost: MoneyText | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in ("allocation", "allocated_cost", "allocated_list_cost"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class ChargebackReport(BaseModel):
    group_by: list[str]
    start: datetime | None = Field(serialization_alias="from")
    end: datetime | None = Field(serialization_alias="to")
    source: str = Field(default="ledger", description="rollup_daily, rollup_hourly or ledger")
    unallocated: str = "report"
    allocate_by: str | None = None
    rows: list[ChargebackRow]
    total: ChargebackTotals


# -- shared request checks -----------------------------------------------------------------------


def strict_query(*allowed: str) -> Callable[[Request], None]:
    """A dependency refusing unknown and repeated query parameters (422 naming the first)."""
    known = frozenset(allowed)

    def check(request: Request) -> None:
        seen: set[str] = set()
        for name, _value in request.query_params.multi_items():
            if name not in known:
                raise InvalidParameter(
                    f"unknown query parameter {name[:64]!r}; allowed: {', '.join(sorted(known))}", field=name[:64]
                )
            if name in seen:
                raise InvalidParameter(f"query parameter {name[:64]!r} given twice", field=name[:64])
            seen.add(name)

    return check


def utc(value: datetime | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        return to_utc(value)
    except ValueError as exc:
        raise InvalidParameter(f"'{field}' {exc}", field=field) from exc


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
"""Bounds a period may take: inside what every warehouse column type holds (Date ends in 2149)."""


def period(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    start, end = utc(start, "from"), utc(end, "to")
    for name, value in (("from", start), ("to", end)):
        if value is not None and not EARLIEST <= value <= LATEST:
            raise InvalidParameter(f"'{name}' must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}", field=name)
    if start is not None and end is not None and end <= start:
        raise InvalidParameter("'to' must be after 'from'", field="to")
    return start, end


def restricted(key: ApiKey, filters: dict[str, str]) -> dict[str, str]:
    """The filters with a team key's team forced in; asking for another team is a 403."""
    if key.team is None:
        return filters
    asked = filters.get("team")
    if asked is not None and asked != key.team:
        raise Forbidden(f"the key {key.key_id} is restricted to another team", field="team")
    return {**filters, "team": key.team}


FilterValue = Annotated[str | None, Query(min_length=1, max_length=128, pattern=NAME_PATTERN)]


class Filters(BaseModel):
    """Equality filters on the event dimensions (bound, never SQL text)."""

    team: str | None = None
    project: str | None = None
    customer: str | None = None
    agent_type: str | None = None
    model: str | None = None
    provider: str | None = None
    tool_name: str | None = None
    session_id: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {name: value for name in ATTRIBUTES if (value := getattr(self, name)) is not None}


def filters_dependency(
    team: FilterValue = None,
    project: FilterValue = None,
    customer: FilterValue = None,
    agent_type: FilterValue = None,
    model: FilterValue = None,
    provider: FilterValue = None,
    tool_name: FilterValue = None,
    session_id: FilterValue = None,
) -> Filters:
    return Filters(
        team=team,
        project=project,
        customer=customer,
        agent_type=agent_type,
        model=model,
        provider=provider,
        tool_name=tool_name,
        session_id=session_id,
    )


FILTER_NAMES = tuple(ATTRIBUTES)


def totals(row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {m: Decimal(row[m]).quantize(CENT_EXPONENT) for m in MONEY_MEASURES}
    out.update({t: int(row[t]) for t in (*TOKEN_MEASURES, "calls")})
    return out


def sum_totals(rows: Iterable[ChargebackTotals]) -> ChargebackTotals:
    rows = list(rows)
    sums: dict[str, Any] = {
        m: sum((getattr(r, m) for r in rows), Decimal(0)).quantize(CENT_EXPONENT) for m in MONEY_MEASURES
    }
    sums.update({t: sum(getattr(r, t) for r in rows) for t in (*TOKEN_MEASURES, "calls")})
    return ChargebackTotals(**sums)


def pick_format(fmt: Format | None, accept: str | None) -> Format:
    if fmt is not None:
        return fmt
    accept = (accept or "").lower()
    if "text/csv" in accept:
        return "csv"
    if "parquet" in accept:
        return "parquet"
    return "json"


def file_response(body: bytes, fmt: str, name: str) -> Response:
    media = CSV_TYPE if fmt in ("csv", "focus") else PARQUET_TYPE
    ext = "csv" if fmt in ("csv", "focus") else "parquet"
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}.{ext}"'})


# -- the report -----------------------------------------------------------------------------------


def build_report(
    warehouse: Warehouse,
    database: str,
    group_by: tuple[str, ...],
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, str] | None = None,
    *,
    unallocated: Mode = "report",
    allocate_by: str | None = None,
) -> ChargebackReport:
    sql, params, source = report_query(database, group_by, start, end, filters)
    rows: list[dict[str, Any]] = [{**r, **totals(r)} for r in warehouse.query(sql, params)]
    if allocate_by is not None and allocate_by in group_by:
        rows = allocate(rows, group_by, allocate_by, unallocated, MONEY_MEASURES, (*TOKEN_MEASURES, "calls"))
    report_rows = [
        ChargebackRow(
            group={g: row[g] for g in group_by},
            allocation=row.get("allocation"),
            allocated_cost=row.get("allocated_cost"),
            allocated_list_cost=row.get("allocated_list_cost"),
            **totals(row),
        )
        for row in rows
    ]
    # The grand total is the exact Decimal sum of the group rows: it adds up to the cent by construction.
    return ChargebackReport(
        group_by=list(group_by),
        start=start,
        end=end,
        source=source,
        unallocated=unallocated,
        allocate_by=allocate_by,
        rows=report_rows,
        total=sum_totals(report_rows),
    )


def report_table_columns(report: ChargebackReport) -> list[str]:
    columns = [*report.group_by, *MONEY_MEASURES]
    if report.allocate_by in report.group_by:
        columns += ["allocation"] + (
            ["allocated_cost", "allocated_list_cost"] if report.unallocated != "report" else []
        )
    return [*columns, *TOKEN_MEASURES, "calls"]


def report_rows_flat(report: ChargebackReport) -> list[dict[str, Any]]:
    return [{**r.group, **r.model_dump(exclude={"group"})} for r in report.rows]


def focus_export(
    warehouse: Warehouse,
    database: str,
    start: datetime | None,
    end: datetime | None,
    filters: dict[str, str],
    with_sessions: bool,
    fmt: str,
    unallocated: Mode = "report",
    allocate_by: str = "team",
) -> Response:
    group_by = focus.GROUP_BY + (("session_id",) if with_sessions else ())
    sql, params, _source = report_query(database, group_by, start, end, filters)
    rows = warehouse.query(sql, params)
    if unallocated != "report":
        rows = allocate(rows, group_by, allocate_by, unallocated, MONEY_MEASURES, (*TOKEN_MEASURES, "calls"))
    df = frame(focus.focus_rows(rows), focus.COLUMNS)
    if fmt == "focus":
        return file_response(to_csv(df), "focus", "focus-1.2")
    return file_response(to_parquet(df, focus.arrow_types()), "focus_parquet", "focus-1.2")


CHARGEBACK_PARAMS = ("group_by", "from", "to", "unallocated", "allocate_by", "format", *FILTER_NAMES)


@router.get(
    "/chargeback",
    response_model=ChargebackReport,
    response_model_by_alias=True,
    summary="Chargeback by team, project, customer, ... over [from, to)",
    responses=FILE_RESPONSES,
    dependencies=[Depends(strict_query(*CHARGEBACK_PARAMS))],
)
def chargeback(
    request: Request,
    key: Annotated[ApiKey, Depends(require("reports:read"))],
    filters: Annotated[Filters, Depends(filters_dependency)],
    group_by: Annotated[
        str, Query(max_length=256, description=f"Comma-separated, from: {', '.join(REPORT_DIMENSIONS)}")
    ] = "team",
    start: Annotated[datetime | None, Query(alias="from", description="ISO datetime, inclusive")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="ISO datetime, exclusive")] = None,
    unallocated: Annotated[Mode, Query(description="report, or distribute: proportional, even")] = "report",
    allocate_by: Annotated[
        Literal["team", "project", "customer", "agent_type"], Query(description="the shared-cost dimension")
    ] = "team",
    format: Annotated[Format | None, Query(description="json, csv, parquet, focus (CSV), focus_parquet")] = None,
) -> Any:
    dims = parse_report_group_by(group_by)
    start, end = period(start, end)
    fmt = pick_format(format, request.headers.get("accept"))
    where = restricted(key, filters.as_dict())
    state = request.app.state
    if fmt in ("focus", "focus_parquet"):
        with_sessions = "session_id" in dims
        try:
            return focus_export(
                state.warehouse,
                state.settings.database,
                start,
                end,
                where,
                with_sessions,
                fmt,
                unallocated,
                allocate_by,
            )
        except AllocationError as exc:
            raise InvalidParameter(str(exc), field="unallocated") from exc
    if unallocated != "report" and allocate_by not in dims:
        raise InvalidParameter(f"unallocated={unallocated} needs {allocate_by!r} in group_by", field="allocate_by")
    assert allocate_by in ALLOCATABLE
    try:
        report = build_report(
            state.warehouse,
            state.settings.database,
            dims,
            start,
            end,
            where,
            unallocated=unallocated,
            allocate_by=allocate_by if allocate_by in dims else None,
        )
    except AllocationError as exc:
        raise InvalidParameter(str(exc), field="unallocated") from exc
    if fmt == "json":
        return report
    df = frame(report_rows_flat(report), report_table_columns(report))
    return file_response(to_csv(df) if fmt == "csv" else to_parquet(df), fmt, "chargeback")
