"""Report queries as pure functions returning (sql, params); nothing here touches I/O.

Every report deduplicates by `event_id` inside the query (the latest row by `priced_at`,
as ReplacingMergeTree keeps after merges), so totals are exact before any merge and
without FINAL or OPTIMIZE. Dimensions come from an allow-list; values are bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api.errors import InvalidParameter


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


def parse_group_by(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`"team,project"` or `["team", "project"]` -> checked, ordered, without repeats."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    names: list[str] = []
    for raw in parts:
        name = raw.strip()
        if not name:
            continue
        if name not in DIMENSIONS:
            raise InvalidParameter(
                f"unknown group_by field {name!r}; allowed: {', '.join(DIMENSIONS)}", field="group_by"
            )
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
    filters = dict(filters or {})
    for name in filters:
        if name not in DIMENSIONS or name == "day":
            raise InvalidParameter(f"cannot filter on {name!r}", field=name)

    params: dict[str, Any] = {"database": database}
    # A reservation (call_started) is an estimate, not spend: the event that settles it is charged.
    conditions = ["kind != 'call_started'"]
    if start is not None:
        conditions.append("occurred_at >= {start:DateTime64(6, 'UTC')}")
        params["start"] = start
    if end is not None:
        conditions.append("occurred_at < {end:DateTime64(6, 'UTC')}")
        params["end"] = end
    for i, (name, value) in enumerate(sorted(filters.items())):
        conditions.append(f"{DIMENSIONS[name].column} = {{f{i}:String}}")
        params[f"f{i}"] = value
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""

    columns: list[str] = []
    for name in group_by:
        if DIMENSIONS[name].column not in columns:
            columns.append(DIMENSIONS[name].column)
    columns += [*MONEY_MEASURES, *TOKEN_MEASURES]

    select = [f"{DIMENSIONS[name].expr} AS {name}" for name in group_by]
    select += [f"sum({m}) AS {m}" for m in MONEY_MEASURES]
    select += [f"sum({t}) AS {t}" for t in TOKEN_MEASURES]
    select.append("count() AS calls")
    sql = f"SELECT {', '.join(select)} FROM ({deduplicated('database', columns, where)})"
    if group_by:
        keys = ", ".join(group_by)
        sql += f" GROUP BY {keys} ORDER BY {keys}"
    return sql, params
