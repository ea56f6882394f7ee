"""Report queries as pure functions returning (sql, params); nothing here touches I/O.

Every report deduplicates by `event_id` inside the query (the latest row by `priced_at`,
as ReplacingMergeTree keeps after merges), so totals are exact before any merge and
without FINAL or OPTIMIZE. Dimensions come from an allow-list; values are bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.errors import InvalidParameter


def to_utc(value: datetime) -> datetime:
    """Aware UTC (naive means UTC). ValueError for a time UTC cannot hold (0001-01-01T00:00+01:00)."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{value.isoformat()} is out of range") from exc


@dataclass(frozen=True, slots=True)
class Dimension:
    column: str
    """The raw column carried through the dedupe step."""
    expr: str
    """The grouping expression over the deduplicated row."""


DIMENSIONS: Mapping[str, Dimension] = {
    "team": Dimension("team", "team"),
    "project": Dimension("project", "project"),
    "customer": Dimension("customer", "customer"),
    "agent_type": Dimension("agent_type", "agent_type"),
    "model": Dimension("model", "model"),
    "provider": Dimension("provider", "provider"),
    "tool_name": Dimension("tool_name", "tool_name"),
    "session_id": Dimension("session_id", "session_id"),
    "day": Dimension("occurred_at", "toDate(occurred_at)"),
}
"""The allow-list of report dimensions: public name -> SQL over the deduplicated rows."""

MONEY_MEASURES = ("cost", "list_cost")
TOKEN_MEASURES = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
CHARGED = "kind != 'call_started'"
"""Rows that are spend: a reservation (call_started) is an estimate; the event that settles it is charged."""
CALLS = "countIf(kind IN ('llm_call', 'tool_call'))"
"""What every report counts as calls: LLM and tool calls, never aborts or adjustments."""


def parse_group_by(value: str | Sequence[str] | None, allowed: Mapping[str, Dimension] = DIMENSIONS) -> tuple[str, ...]:
    """`"team,project"` or `["team", "project"]` -> checked against `allowed`, ordered, without repeats."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    names: list[str] = []
    for raw in parts:
        name = raw.strip()
        if not name:
            continue
        if name not in allowed:
            raise InvalidParameter(f"unknown group_by field {name!r}; allowed: {', '.join(allowed)}", field="group_by")
        if name not in names:
            names.append(name)
    return tuple(names)


def deduplicated(database_param: str, columns: Sequence[str], where: str) -> str:
    """A subquery with one row per event_id: the latest by priced_at, columns kept together."""
    picked = ", ".join(columns)
    names = ", ".join(f"picked.{i} AS {c}" for i, c in enumerate(columns, start=1))
    return (
        f"SELECT {names} FROM ("
        f"SELECT event_id, argMax(tuple({picked}), priced_at) AS picked "
        f"FROM {{{database_param}:Identifier}}.priced_events"
        f"{where} GROUP BY event_id)"
    )


def chargeback_query(
    database: str,
    group_by: Sequence[str],
    start: datetime | None = None,
    end: datetime | None = None,
    filters: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Cost, list cost, tokens and calls per group over [start, end) of occurred_at.

    `filters` are equality filters on allow-listed dimensions (bound), the hook for
    team-scoped API keys."""
    group_by = parse_group_by(list(group_by))
    params: dict[str, Any] = {"database": database}
    conditions = [CHARGED]
    if start is not None:
        conditions.append("occurred_at >= {start:DateTime64(6, 'UTC')}")
        params["start"] = start
    if end is not None:
        conditions.append("occurred_at < {end:DateTime64(6, 'UTC')}")
        params["end"] = end
    conditions += equality_filters(filters, params)
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""

    columns: list[str] = []
    for name in group_by:
        if DIMENSIONS[name].column not in columns:
            columns.append(DIMENSIONS[name].column)
    columns += ["kind", *MONEY_MEASURES, *TOKEN_MEASURES]

    select = [f"{DIMENSIONS[name].expr} AS {name}" for name in group_by]
    select += [f"sum({m}) AS {m}" for m in MONEY_MEASURES]
    select += [f"sum({t}) AS {t}" for t in TOKEN_MEASURES]
    select.append(f"{CALLS} AS calls")
    sql = f"SELECT {', '.join(select)} FROM ({deduplicated('database', columns, where)})"
    if group_by:
        keys = ", ".join(group_by)
        sql += f" GROUP BY {keys} ORDER BY {keys}"
    return sql, params


# -- reports over the ledger and its rollups ---------------------------------------------------
#
# `event_ledger` holds one row per event_id (the sink inserts first-seen events only), and
# `rollup_hourly` / `rollup_daily` are summing rollups fed from the ledger's inserts. Summing
# them at query time is exact before any merge; they and the ledger agree by construction.

ATTRIBUTES: tuple[str, ...] = (
    "team", "project", "customer", "agent_type", "model", "provider", "tool_name", "session_id",
)  # fmt: skip
"""Dimensions that are columns of an event: allowed in group_by and as equality filters."""


def equality_filters(filters: Mapping[str, str] | None, params: dict[str, Any]) -> list[str]:
    """`name = {fN:String}` conditions for filters on ATTRIBUTES, values bound into `params`;
    any other name is refused (a team key's restriction is one of these filters)."""
    conditions = []
    for i, (name, value) in enumerate(sorted((filters or {}).items())):
        if name not in ATTRIBUTES:
            raise InvalidParameter(f"cannot filter on {name[:64]!r}", field=name[:64])
        conditions.append(f"{name} = {{f{i}:String}}")
        params[f"f{i}"] = value
    return conditions


TIME_GRAINS: tuple[str, ...] = ("hour", "day", "week", "month")
"""Time dimensions, all in UTC; weeks start on Monday (ISO)."""
REPORT_DIMENSIONS: tuple[str, ...] = ATTRIBUTES + TIME_GRAINS
"""The allow-list of GET /v1/chargeback's group_by."""
ROLLUP_ATTRIBUTES: tuple[str, ...] = (*(a for a in ATTRIBUTES if a != "session_id"), "currency")
"""Columns of the rollups' keys. session_id is not one: nearly every session would be its own row."""

LEDGER, HOURLY, DAILY = "ledger", "rollup_hourly", "rollup_daily"
SOURCES = (LEDGER, HOURLY, DAILY)
_TABLE = {LEDGER: "event_ledger", HOURLY: "rollup_hourly", DAILY: "rollup_daily"}

_TIME_COLUMN = {LEDGER: "occurred_at", HOURLY: "hour", DAILY: "day"}
_TIME_PARAM_TYPE = {LEDGER: "DateTime64(6, 'UTC')", HOURLY: "DateTime64(6, 'UTC')", DAILY: "Date"}
_TIME_EXPR = {
    LEDGER: {
        "hour": "toStartOfHour(occurred_at)",
        "day": "toDate(occurred_at)",
        "week": "toMonday(occurred_at)",
        "month": "toStartOfMonth(occurred_at)",
    },
    HOURLY: {"hour": "hour", "day": "toDate(hour)", "week": "toMonday(hour)", "month": "toStartOfMonth(hour)"},
    DAILY: {"day": "day", "week": "toMonday(day)", "month": "toStartOfMonth(day)"},
}


def parse_report_group_by(value: str | None) -> tuple[str, ...]:
    """`"team,month"` -> checked, ordered, without repeats; names from REPORT_DIMENSIONS."""
    names: list[str] = []
    for raw in (value or "").split(","):
        name = raw.strip()
        if not name:
            continue
        if name not in REPORT_DIMENSIONS:
            raise InvalidParameter(
                f"unknown group_by field {name[:64]!r}; allowed: {', '.join(REPORT_DIMENSIONS)}", field="group_by"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def _aligned(value: datetime | None, grain: str) -> bool:
    if value is None:
        return True
    if value.minute or value.second or value.microsecond:
        return False
    return grain == "hour" or value.hour == 0


def choose_source(
    group_by: Sequence[str], start: datetime | None, end: datetime | None, filters: Mapping[str, str]
) -> str:
    """The cheapest table that answers exactly: the daily rollup for whole UTC days, the hourly
    one for whole hours, the ledger for anything by session or at finer time bounds."""
    if "session_id" in group_by or "session_id" in filters:
        return LEDGER
    if "hour" not in group_by and _aligned(start, "day") and _aligned(end, "day"):
        return DAILY
    if _aligned(start, "hour") and _aligned(end, "hour"):
        return HOURLY
    return LEDGER


def _where(
    source: str, start: datetime | None, end: datetime | None, filters: Mapping[str, str], params: dict[str, Any]
) -> str:
    conditions = []
    if source == LEDGER:
        conditions.append(CHARGED)
    column, type_ = _TIME_COLUMN[source], _TIME_PARAM_TYPE[source]
    for name, bound, op in (("start", start, ">="), ("end", end, "<")):
        if bound is None:
            continue
        conditions.append(f"{column} {op} {{{name}:{type_}}}")
        params[name] = bound.date() if source == DAILY else bound
    conditions += equality_filters(filters, params)
    return (" WHERE " + " AND ".join(conditions)) if conditions else ""


def report_query(
    database: str,
    group_by: Sequence[str],
    start: datetime | None = None,
    end: datetime | None = None,
    filters: Mapping[str, str] | None = None,
    *,
    source: str | None = None,
    order_by_cost: bool = False,
    limit: int | None = None,
) -> tuple[str, dict[str, Any], str]:
    """(sql, params, source): money, tokens and calls per group over [start, end) of event time.

    `group_by` names come from REPORT_DIMENSIONS (plus `currency`); `filters` are bound
    equality filters on ATTRIBUTES (a team key's restriction is one). The source is chosen by
    `choose_source` unless given; a rollup cannot group by session_id."""
    filters = dict(filters or {})
    for name in group_by:
        if name not in REPORT_DIMENSIONS and name != "currency":
            raise InvalidParameter(f"unknown group_by field {name[:64]!r}", field="group_by")
    source = source or choose_source(group_by, start, end, filters)
    if source != LEDGER and ("session_id" in group_by or "session_id" in filters):
        raise InvalidParameter("session_id needs the ledger", field="group_by")
    if source == DAILY and "hour" in group_by:
        raise InvalidParameter("the daily rollup has no hours", field="group_by")
    params: dict[str, Any] = {"database": database}
    where = _where(source, start, end, filters, params)
    select = [f"{_TIME_EXPR[source][g] if g in TIME_GRAINS else g} AS {g}" for g in group_by]
    select += [f"sum({m}) AS {m}" for m in (*MONEY_MEASURES, *TOKEN_MEASURES)]
    select.append(f"{CALLS} AS calls" if source == LEDGER else "sum(calls) AS calls")
    sql = f"SELECT {', '.join(select)} FROM {{database:Identifier}}.{_TABLE[source]}{where}"
    if group_by:
        sql += f" GROUP BY {', '.join(group_by)}"
    if order_by_cost:
        sql += " ORDER BY cost DESC" + "".join(f", {g}" for g in group_by)
    elif group_by:
        sql += f" ORDER BY {', '.join(group_by)}"
    if limit is not None:
        sql += " LIMIT {limit:UInt32}"
        params["limit"] = limit
    return sql, params, source


SESSION_EVENT_COLUMNS: tuple[str, ...] = (
    "event_id", "kind", "occurred_at", "workflow_id", "step", "step_name", "agent_type", "team", "project",
    "customer", "provider", "model", "tool_name", *TOKEN_MEASURES, *MONEY_MEASURES, "currency",
    "price_version", "unpriced",
)  # fmt: skip


def session_events_query(
    database: str, session_id: str, filters: Mapping[str, str] | None = None, limit: int = 10_000
) -> tuple[str, dict[str, Any]]:
    """Every event of one session from the ledger (reservations included, marked by `kind`),
    in event time order; `filters` restrict it like any report (a team key's team)."""
    params: dict[str, Any] = {"database": database, "session_id": session_id, "limit": limit}
    conditions = ["session_id = {session_id:String}", *equality_filters(filters, params)]
    sql = (
        f"SELECT {', '.join(SESSION_EVENT_COLUMNS)} FROM {{database:Identifier}}.event_ledger "
        f"WHERE {' AND '.join(conditions)} ORDER BY occurred_at, event_id LIMIT {{limit:UInt32}}"
    )
    return sql, params


ROLLUP_TIME_KEYS: Mapping[str, tuple[str, str]] = {
    HOURLY: ("hour", "toStartOfHour(occurred_at)"),
    DAILY: ("day", "toDate(occurred_at)"),
}
"""Each rollup table: its time column and that column's expression over the ledger."""


def rollup_insert(
    database: str, table: str, ledger_token: str, *, dedup_token: str | None
) -> tuple[str, dict[str, Any]]:
    """(sql, params): roll the ledger rows written under `ledger_token` up into `table`.

    With `dedup_token` the engine drops a second insert carrying it (the sink's replays);
    `ledger_token` '' selects rows written without one (a bulk load)."""
    time_key, time_expr = ROLLUP_TIME_KEYS[table]
    keys = ", ".join(ROLLUP_ATTRIBUTES)
    sums = [*MONEY_MEASURES, *TOKEN_MEASURES]
    params: dict[str, Any] = {"database": database, "ledger_token": ledger_token}
    settings = ""
    if dedup_token is not None:
        settings = " SETTINGS insert_deduplication_token = {dedup_token:String}"
        params["dedup_token"] = dedup_token
    sql = (
        f"INSERT INTO {{database:Identifier}}.{table} ({time_key}, {keys}, {', '.join(sums)}, calls){settings} "
        f"SELECT {time_expr} AS {time_key}, {keys}, {', '.join(f'sum({m}) AS {m}' for m in sums)}, {CALLS} AS calls "
        f"FROM {{database:Identifier}}.event_ledger WHERE ledger_token = {{ledger_token:String}} AND {CHARGED} "
        f"GROUP BY {time_key}, {keys}"
    )
    return sql, params


def rollup_drift_query(database: str) -> tuple[str, dict[str, Any]]:
    """Ledger minus each rollup, in cost and calls: all zero unless a rollup insert was lost."""
    sql = (
        "SELECT l.cost - h.cost AS hourly_cost_drift, l.calls - h.calls AS hourly_calls_drift, "
        "l.cost - d.cost AS daily_cost_drift, l.calls - d.calls AS daily_calls_drift FROM "
        f"(SELECT sum(cost) AS cost, toInt64({CALLS}) AS calls FROM {{database:Identifier}}.event_ledger "
        f"WHERE {CHARGED}) AS l, "
        "(SELECT sum(cost) AS cost, toInt64(sum(calls)) AS calls FROM {database:Identifier}.rollup_hourly) AS h, "
        "(SELECT sum(cost) AS cost, toInt64(sum(calls)) AS calls FROM {database:Identifier}.rollup_daily) AS d"
    )
    return sql, {"database": database}


def flagged_events_queries(
    database: str, start: datetime | None, end: datetime | None, filters: Mapping[str, str] | None = None
) -> tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]:
    """Two (sql, params): events charged a fallback rate (`unpriced`, from the ledger, the rows the
    rollups summed) and events flagged `late` or `clamped` (only priced_events keeps those flags,
    deduplicated by event_id here). Both filter on (few) flagged rows, so they stay fast over a month."""
    ledger_params: dict[str, Any] = {"database": database}
    ledger_where = _where(LEDGER, start, end, dict(filters or {}), ledger_params)
    unpriced = (
        "SELECT countIf(unpriced) AS unpriced_events, sumIf(cost, unpriced) AS unpriced_cost "
        f"FROM {{database:Identifier}}.event_ledger{ledger_where}"
    )
    raw_params: dict[str, Any] = {"database": database}
    raw_where = _where(LEDGER, start, end, dict(filters or {}), raw_params) + " AND (late OR clamped)"
    flags = (
        "SELECT countIf(late) AS late_events, sumIf(cost, late) AS late_cost, "
        "countIf(clamped) AS clamped_events, sumIf(cost, clamped) AS clamped_cost "
        f"FROM ({deduplicated('database', ('late', 'clamped', 'cost'), raw_where)})"
    )
    return (unpriced, ledger_params), (flags, raw_params)
