"""Billing periods: calendar months (UTC) that can be closed, and what a close means.

Nothing is rewritten when a month closes. Which month an event is charged in (its billing
period) follows from two facts that never change once written: when the event first
reached the warehouse (`event_ledger.inserted_at`; the ledger keeps the first copy of each
event_id and nothing else) and when each month was closed (`period_closes`, first close
wins). An event that occurred in month M is charged

- in M, if it arrived before M was closed (or M is still open);
- else in the first month after M that was still open when it arrived: a carried-over row.

So a closed month's report is fixed at its close: a new event for it lands in the next open
month, a re-sent copy of a stored event never reaches the ledger, and a re-pricing of it
arrives as `adjustment` events dated in it, which are carried over like any late event.

Limit: an insert already running at the instant of the close may carry an `inserted_at` a
moment before `closed_at` and still appear in the closed month; close a month once its
late events have settled (the API refuses months that have not ended).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from api.errors import InvalidParameter
from api.queries import (
    CALLS,
    CHARGED,
    DIMENSIONS,
    MONEY_MEASURES,
    TOKEN_MEASURES,
    Dimension,
    equality_filters,
    parse_group_by,
)
from api.warehouse import Warehouse
from schemas.events import utcnow

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
MAX_CLOSES = 600
"""More closed months than this (50 years) is refused rather than built into one query."""


def parse_period(text: str, field: str = "period") -> date:
    """`2026-10` -> date(2026, 10, 1); anything else is an InvalidParameter."""
    match = _PERIOD.match(text)
    if not match or not (2000 <= int(match.group(1)) <= 2999):
        raise InvalidParameter(f"a period is a month written YYYY-MM (2000-2999), not {text[:40]!r}", field=field)
    return date(int(match.group(1)), int(match.group(2)), 1)


def next_month(month: date) -> date:
    return date(month.year + 1, 1, 1) if month.month == 12 else date(month.year, month.month + 1, 1)


def month_of(moment: datetime) -> date:
    moment = moment.astimezone(UTC) if moment.tzinfo is not None else moment
    return date(moment.year, moment.month, 1)


@dataclass(frozen=True, slots=True)
class PeriodClose:
    period: date
    closed_at: datetime
    closed_by: str


def list_closes(warehouse: Warehouse, database: str) -> list[PeriodClose]:
    rows = warehouse.query(
        "SELECT period, min(closed_at) AS first_closed_at, argMin(closed_by, closed_at) AS first_closed_by "
        "FROM {database:Identifier}.period_closes GROUP BY period ORDER BY period",
        {"database": database},
    )
    return [PeriodClose(r["period"], r["first_closed_at"], r["first_closed_by"]) for r in rows]


def close_period(
    warehouse: Warehouse, database: str, period: date, *, closed_by: str, now: datetime | None = None
) -> tuple[PeriodClose, bool]:
    """Close a month that has ended; returns (the close, True if this call closed it).

    Closing a month already closed returns its first close and changes nothing."""
    now = now or utcnow()
    if next_month(period) > month_of(now):
        raise InvalidParameter(f"{period:%Y-%m} has not ended yet; only past months can be closed", field="period")
    for close in list_closes(warehouse, database):
        if close.period == period:
            return close, False
    warehouse.insert(database, "period_closes", ("period", "closed_at", "closed_by"), [(period, now, closed_by[:200])])
    # two concurrent closes both insert; the first one is the close (min closed_at)
    first = next(c for c in list_closes(warehouse, database) if c.period == period)
    return first, first.closed_at == now


def billing_condition(period: date, closes: Sequence[PeriodClose]) -> tuple[str, dict[str, Any]]:
    """A WHERE condition over event_ledger rows (occurred_at, inserted_at): the rows charged
    in `period` under these closes. Values are bound; the text depends only on how many
    closed months precede `period`."""
    if len(closes) > MAX_CLOSES:
        raise InvalidParameter(f"more than {MAX_CLOSES} closed months", field="period")
    closed = {c.period: c.closed_at for c in closes}
    params: dict[str, Any] = {"bp_period": period}
    # arrived before `period` itself closed (always, while it is open)
    until = ""
    if period in closed:
        params["bp_until"] = closed[period]
        until = " AND inserted_at < {bp_until:DateTime64(6, 'UTC')}"
    parts = [f"(toStartOfMonth(occurred_at) = {{bp_period:Date}}{until})"]
    # carried over from a closed month M < period: arrived once every month from M up to
    # the one before `period` was closed, and (above) before `period` closed
    for i, month in enumerate(sorted(m for m in closed if m < period)):
        latest = None
        m = month
        while m < period:
            if m not in closed:
                latest = None
                break
            latest = closed[m] if latest is None else max(latest, closed[m])
            m = next_month(m)
        if latest is None:
            continue
        params[f"bp_m{i}"] = month
        params[f"bp_from{i}"] = latest
        parts.append(
            f"(toStartOfMonth(occurred_at) = {{bp_m{i}:Date}} "
            f"AND inserted_at >= {{bp_from{i}:DateTime64(6, 'UTC')}}{until})"
        )
    return "(" + " OR ".join(parts) + ")", params


PERIOD_DIMENSIONS: Mapping[str, Dimension] = {
    **DIMENSIONS,
    "currency": Dimension("currency", "currency"),
    "charge_category": Dimension("kind", "if(kind = 'adjustment', 'Adjustment', 'Usage')"),
}
"""What a billing period's report can be grouped by: the report dimensions, the currency, and
`charge_category` (FOCUS's: `Adjustment` for adjustment events, else `Usage`)."""


def period_report_query(
    database: str,
    period: date,
    closes: Sequence[PeriodClose],
    group_by: Sequence[str],
    filters: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Chargeback of one billing period from the ledger: cost, list cost, tokens and calls
    per group, plus what was carried over from closed months and what adjustment events
    add. One row per event_id (the first seen); reservations (call_started) are not spend."""
    group_by = parse_group_by(list(group_by), PERIOD_DIMENSIONS)
    condition, params = billing_condition(period, closes)
    params["database"] = database
    conditions = [CHARGED, condition, *equality_filters(filters, params)]
    columns: list[str] = []
    for name in group_by:
        if PERIOD_DIMENSIONS[name].column not in columns:
            columns.append(PERIOD_DIMENSIONS[name].column)
    columns = list(dict.fromkeys([*columns, *MONEY_MEASURES, *TOKEN_MEASURES, "kind", "occurred_at"]))
    picked = ", ".join(columns)
    names = ", ".join(f"picked.{i} AS {c}" for i, c in enumerate(columns, start=1))
    # the raw cost under its own name: the outer `sum(cost) AS cost` would shadow `cost`
    names += f", picked.{columns.index('cost') + 1} AS raw_cost"
    inner = (
        f"SELECT {names} FROM (SELECT event_id, argMin(tuple({picked}), inserted_at) AS picked "
        f"FROM {{database:Identifier}}.event_ledger WHERE {' AND '.join(conditions)} GROUP BY event_id)"
    )
    select = [f"{PERIOD_DIMENSIONS[name].expr} AS {name}" for name in group_by]
    select += [f"sum({m}) AS {m}" for m in MONEY_MEASURES]
    select += [f"sum({t}) AS {t}" for t in TOKEN_MEASURES]
    select += [
        f"{CALLS} AS calls",
        "count() AS events",
        "sumIf(raw_cost, toStartOfMonth(occurred_at) != {bp_period:Date}) AS carried_over_cost",
        "countIf(kind IN ('llm_call', 'tool_call') AND toStartOfMonth(occurred_at) != {bp_period:Date}) "
        "AS carried_over_calls",
        "sumIf(raw_cost, kind = 'adjustment') AS adjustment_cost",
    ]
    sql = f"SELECT {', '.join(select)} FROM ({inner})"
    if group_by:
        keys = ", ".join(group_by)
        sql += f" GROUP BY {keys} ORDER BY {keys}"
    return sql, params
