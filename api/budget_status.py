"""How much of each budget is spent, from the warehouse: pure (sql, params) builders.

The worker keeps the live budget state (with open reservations and its late-event rules); the
dashboard and `/v1/budgets/{id}/spend` show the settled spend the warehouse holds for the
policy's current window, summed through the same report queries (and rollups) as chargeback,
with the same bound filters, so a team key's restriction applies here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from api.queries import ATTRIBUTES, CHARGED, HOURLY, LEDGER, TOKEN_MEASURES, equality_filters, report_query
from processors.budget.windows import (
    ROLLING,
    bucket_start,
    calendar_start,
    first_live_bucket,
    is_rolling,
    window_start,
)
from schemas.budgets import BudgetPolicy, Scope, Window

SCOPE_COLUMN: Mapping[Scope, str] = {
    Scope.SESSION: "session_id",
    Scope.AGENT_TYPE: "agent_type",
    Scope.TEAM: "team",
    Scope.PROJECT: "project",
    Scope.CUSTOMER: "customer",
}
FRACTION_EXPONENT = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class SpendQuery:
    sql: str
    params: dict[str, Any]
    source: str
    window_start: datetime | None
    group_by: tuple[str, ...]


def policy_filters(policy: BudgetPolicy, within: Mapping[str, str]) -> dict[str, str] | None:
    """The policy's match as report filters, narrowed by `within` (a scope value, a key's team);
    None when they contradict each other (no event can match both)."""
    filters = {SCOPE_COLUMN[dim]: value for dim, value in policy.match.items()}
    for name, value in within.items():
        if filters.setdefault(name, value) != value:
            return None
    return filters


def spend_query(
    database: str, policy: BudgetPolicy, now: datetime, within: Mapping[str, str], limit: int
) -> SpendQuery | None:
    """Settled spend per scope value of `policy` in its window containing `now`, biggest first."""
    filters = policy_filters(policy, within)
    if filters is None:
        return None
    start = window_start(policy.window, now, policy.timezone)
    group_by = tuple(SCOPE_COLUMN[dim] for dim in policy.scope)
    sql, params, source = report_query(database, group_by, start, None, filters, order_by_cost=True, limit=limit)
    return SpendQuery(sql, params, source, start, group_by)


def spent_tokens(row: Mapping[str, Any]) -> int:
    """Tokens as budgets count them (schemas.events.CostEvent.total_tokens)."""
    return sum(int(row[t]) for t in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))


def used_fraction(policy: BudgetPolicy, cost: Decimal, tokens: int) -> Decimal:
    """The larger of spend/limit over the limits the policy sets, to four places."""
    parts = []
    if policy.limit_cost is not None and policy.limit_cost > 0:
        parts.append(cost / policy.limit_cost)
    if policy.limit_tokens is not None and policy.limit_tokens > 0:
        parts.append(Decimal(tokens) / Decimal(policy.limit_tokens))
    return max(parts, default=Decimal(0)).quantize(FRACTION_EXPONENT)


def scope_value_text(policy: BudgetPolicy, group: Mapping[str, Any]) -> str | None:
    """`team=t1|agent_type=x`, as signals and alerts name it; None if a dimension has no value."""
    parts = []
    for dim in policy.scope:
        value = group.get(SCOPE_COLUMN[dim])
        if value is None:
            return None
        parts.append(f"{dim.value}={value}")
    return "|".join(parts)


def session_attribution_query(database: str, session_id: str, team: str | None) -> tuple[str, dict[str, Any]]:
    """The attribution of a session's first charged event (of `team` only, for a team key)."""
    params: dict[str, Any] = {"database": database, "session_id": session_id}
    conditions = ["session_id = {session_id:String}", CHARGED]
    if team is not None:
        conditions.append("team = {team:String}")
        params["team"] = team
    columns = ", ".join(a for a in ATTRIBUTES if a in SCOPE_COLUMN.values())
    sql = (
        f"SELECT {columns} FROM {{database:Identifier}}.event_ledger WHERE {' AND '.join(conditions)} "
        "ORDER BY occurred_at, event_id LIMIT 1"
    )
    return sql, params


# -- opening balances: what a policy finds already spent in its window when it is written -------

CALENDAR_STEP: Mapping[Window, timedelta] = {
    # from a period's start, a time inside the next period, whatever DST does to its length
    Window.CALENDAR_DAY: timedelta(hours=36),
    Window.CALENDAR_WEEK: timedelta(days=7, hours=12),
    Window.CALENDAR_MONTH: timedelta(days=32),
}


def opening_window(policy: BudgetPolicy, now: datetime) -> tuple[datetime | None, datetime | None]:
    """[start, end) of event time that the budgets of `policy` count at `now`.

    Calendar windows end where the next one starts (an event dated in it within the clock skew
    belongs to the next state); rolling windows start at their oldest live bucket and end a
    window length after `now` (a newer bucket slides the window, as in the worker; the worker
    clamps dates beyond its few minutes of skew, so none is later, and the bound keeps the
    buckets read few); lifetime has neither."""
    if policy.window is Window.LIFETIME:
        return None, None
    if is_rolling(policy.window):
        length, _ = ROLLING[policy.window]
        return bucket_start(policy.window, first_live_bucket(policy.window, now)), now + length
    start = calendar_start(policy.window, now, policy.timezone)
    return start, calendar_start(policy.window, start + CALENDAR_STEP[policy.window], policy.timezone)


def _measures(prefix: str = "") -> str:
    return ", ".join(f"sum({prefix}{m}) AS {m}" for m in ("cost", *TOKEN_MEASURES))


def _ledger_where(policy: BudgetPolicy, now: datetime, params: dict[str, Any], source: str = LEDGER) -> str:
    start, end = opening_window(policy, now)
    time_column = "hour" if source == HOURLY else "occurred_at"
    conditions = [CHARGED] if source == LEDGER else []
    if start is not None:
        conditions.append(f"{time_column} >= {{start:DateTime64(6, 'UTC')}}")
        params["start"] = start
    if end is not None:
        conditions.append(f"{time_column} < {{end:DateTime64(6, 'UTC')}}")
        params["end"] = end
    filters = policy_filters(policy, {}) or {}
    conditions += equality_filters(filters, params)
    return " AND ".join(conditions) or "1"


def _top_scopes(table: str, columns: str, where: str) -> str:
    # the same order as the totals query (cost, then the scope columns), so the same top values
    return (
        f"({columns}) IN (SELECT {columns} FROM {{database:Identifier}}.{table} WHERE {where} "
        f"GROUP BY {columns} ORDER BY sum(cost) DESC, {columns} LIMIT {{top:UInt32}})"
    )


def opening_totals_query(database: str, policy: BudgetPolicy, now: datetime, limit: int) -> tuple[str, dict[str, Any]]:
    """Settled spend per scope value in the window at `now`, biggest first (cost, then the scope
    columns), through the rollups where they answer exactly (report_query's choice)."""
    start, end = opening_window(policy, now)
    group_by = tuple(SCOPE_COLUMN[dim] for dim in policy.scope)
    filters = policy_filters(policy, {}) or {}
    sql, params, _ = report_query(database, group_by, start, end, filters, order_by_cost=True, limit=limit)
    return sql, params


def opening_buckets_query(database: str, policy: BudgetPolicy, now: datetime, top: int) -> tuple[str, dict[str, Any]]:
    """Rolling windows: spend per scope value and bucket (the worker's bucket index) of the `top`
    biggest scope values. Buckets of an hour or more come from the hourly rollup."""
    _, size = ROLLING[policy.window]
    columns = ", ".join(SCOPE_COLUMN[dim] for dim in policy.scope)
    hourly = size >= timedelta(hours=1) and Scope.SESSION not in policy.scope
    source = HOURLY if hourly else LEDGER
    table = "rollup_hourly" if hourly else "event_ledger"
    params: dict[str, Any] = {"database": database, "top": top, "size": int(size.total_seconds())}
    where = _ledger_where(policy, now, params, source)
    time_column = "hour" if hourly else "occurred_at"
    sql = (
        f"SELECT {columns}, intDiv(toUnixTimestamp({time_column}), {{size:UInt32}}) AS bucket, {_measures()} "
        f"FROM {{database:Identifier}}.{table} WHERE {where} AND {_top_scopes(table, columns, where)} "
        f"GROUP BY {columns}, bucket ORDER BY {columns}, bucket"
    )
    return sql, params


def opening_sessions_query(
    database: str, policy: BudgetPolicy, now: datetime, top: int, per_scope: int
) -> tuple[str, dict[str, Any]]:
    """Scopes wider than a session: the `per_scope` biggest sessions of each of the `top` biggest
    scope values, with how many sessions each scope value has in all (`scope_sessions`)."""
    columns = ", ".join(SCOPE_COLUMN[dim] for dim in policy.scope)
    params: dict[str, Any] = {"database": database, "top": top, "per_scope": per_scope}
    where = _ledger_where(policy, now, params)
    sql = (
        f"SELECT {columns}, session_id, {_measures()}, count() OVER (PARTITION BY {columns}) AS scope_sessions "
        f"FROM {{database:Identifier}}.event_ledger WHERE {where} AND {_top_scopes('event_ledger', columns, where)} "
        f"GROUP BY {columns}, session_id ORDER BY cost DESC, session_id LIMIT {{per_scope:UInt32}} BY {columns}"
    )
    return sql, params


def opening_scope_count_query(database: str, policy: BudgetPolicy, now: datetime) -> tuple[str, dict[str, Any]]:
    """How many scope values have spend in the window (asked when the totals query hit its limit)."""
    start, end = opening_window(policy, now)
    group_by = tuple(SCOPE_COLUMN[dim] for dim in policy.scope)
    filters = policy_filters(policy, {}) or {}
    sql, params, _ = report_query(database, group_by, start, end, filters)
    not_null = " AND ".join(f"{c} IS NOT NULL" for c in group_by)
    return f"SELECT count() AS scopes FROM ({sql}) WHERE {not_null}", params
