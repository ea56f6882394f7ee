"""How much of each budget is spent, from the warehouse: pure (sql, params) builders.

The worker keeps the live budget state (with open reservations and its late-event rules); the
dashboard and `/v1/budgets/{id}/spend` show the settled spend the warehouse holds for the
policy's current window, summed through the same report queries (and rollups) as chargeback,
with the same bound filters, so a team key's restriction applies here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from api.queries import ATTRIBUTES, CHARGED, report_query
from processors.budget.windows import window_start
from schemas.budgets import BudgetPolicy, Scope

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
