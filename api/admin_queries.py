"""Queries of the admin endpoints (sessions, signals, alerts) as pure (sql, params) functions.

Every table here is a ReplacingMergeTree; each query takes the latest version of a row
itself (argMax or LIMIT 1 BY), so answers are exact before merges, without FINAL. Spend
comes from the event ledger (one row per event_id), as in the chargeback report; a team
filter is always a bound parameter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from api.errors import InvalidParameter
from api.queries import CALLS, CHARGED, to_utc

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2261, 12, 31, tzinfo=UTC)


def utc_in_range(value: datetime | None, field: str) -> datetime | None:
    """A request time as aware UTC (naive means UTC), within what DateTime64 columns hold."""
    if value is None:
        return None
    try:
        value = to_utc(value)
    except ValueError:
        value = EARLIEST - timedelta(days=1)  # out of range: refused below
    if not EARLIEST <= value <= LATEST:
        raise InvalidParameter(f"{field} must be between 1970 and 2261", field=field)
    return value


SESSION_STATES = ("active", "warned", "downgraded", "paused", "killed")


def _spend_where(
    session_id: str | None, team: str | None, params: dict[str, Any], agent_type: str | None = None
) -> str:
    conditions = [CHARGED]
    if agent_type is not None:
        conditions.append("agent_type = {agent_type:String}")
        params["agent_type"] = agent_type
    if session_id is not None:
        conditions.append("session_id = {session_id:String}")
        params["session_id"] = session_id
    if team is not None:
        conditions.append("team = {team:String}")
        params["team"] = team
    return " WHERE " + " AND ".join(conditions)


def session_spend_query(database: str, session_id: str, team: str | None) -> tuple[str, dict[str, Any]]:
    """One row: the session's settled spend (team's rows only when `team`), its calls, its teams."""
    params: dict[str, Any] = {"database": database}
    where = _spend_where(session_id, team, params)
    sql = (
        f"SELECT {CALLS} AS calls, count() AS events, sum(cost) AS cost, sum(list_cost) AS list_cost, "
        "sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
        "min(occurred_at) AS first_event_at, max(occurred_at) AS last_event_at, "
        "arraySort(groupUniqArray(team)) AS teams "
        f"FROM {{database:Identifier}}.event_ledger{where}"
    )
    return sql, params


def session_status_query(database: str, session_id: str) -> tuple[str, dict[str, Any]]:
    sql = (
        "SELECT picked.1 AS state, picked.2 AS signal, picked.3 AS updated_at FROM ("
        "SELECT argMax(tuple(state, signal, updated_at), updated_at) AS picked "
        "FROM {database:Identifier}.session_status WHERE session_id = {session_id:String} "
        "GROUP BY session_id)"
    )
    return sql, {"database": database, "session_id": session_id}


def session_signals_query(database: str, session_id: str) -> tuple[str, dict[str, Any]]:
    sql = (
        "SELECT * FROM (SELECT signal_id, action, policy_id, scope, scope_value, window_start, limit_tokens, "
        "limit_cost, spent_tokens, spent_cost, reason, recommended_model, trigger_event_id, issued_at "
        "FROM {database:Identifier}.signals WHERE session_id = {session_id:String} "
        "ORDER BY signal_id, issued_at DESC LIMIT 1 BY signal_id) ORDER BY issued_at, signal_id LIMIT 1000"
    )
    return sql, {"database": database, "session_id": session_id}


def sessions_query(
    database: str,
    *,
    team: str | None,
    state: str | None,
    limit: int,
    offset: int,
    agent_type: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Sessions by spend, with their state (`active` when no signal ever reached them).

    With a team, only sessions with that team's events (and that team's spend); without,
    also sessions that have a status but no settled event (stopped at their first call); the
    same with an agent type, which only events carry."""
    params: dict[str, Any] = {"database": database, "limit": limit, "offset": offset}
    where = _spend_where(None, team, params, agent_type)
    if state is not None and state != "active":
        # Stopped sessions are few: read only their events, not every session's (10M events:
        # seconds otherwise). `active` has no such shortcut (no status row, or an active one).
        where += (
            " AND session_id IN (SELECT session_id FROM {database:Identifier}.session_status "
            "GROUP BY session_id HAVING argMax(state, updated_at) = {state:String})"
        )
    spend = (
        f"SELECT session_id, sum(cost) AS cost, {CALLS} AS calls, count() AS events, max(occurred_at) AS last_event_at "
        f"FROM {{database:Identifier}}.event_ledger{where} GROUP BY session_id"
    )
    status = (
        "SELECT session_id, argMax(state, updated_at) AS state, max(updated_at) AS status_at "
        "FROM {database:Identifier}.session_status GROUP BY session_id"
    )
    join = "LEFT JOIN" if team is not None or agent_type is not None else "FULL OUTER JOIN"
    sql = (
        "SELECT session_id, if(st.state = '', 'active', st.state) AS state, sp.cost AS cost, sp.calls AS calls, "
        "if(sp.events = 0, NULL, sp.last_event_at) AS last_event_at, "
        "if(st.state = '', NULL, st.status_at) AS status_updated_at "
        f"FROM ({spend}) AS sp {join} ({status}) AS st USING session_id"
    )
    if state is not None:
        sql += " WHERE if(st.state = '', 'active', st.state) = {state:String}"
        params["state"] = state
    sql += " ORDER BY cost DESC, session_id LIMIT {limit:UInt32} OFFSET {offset:UInt32}"
    return sql, params


ALERT_FIELDS = (
    "alert_id", "policy_id", "scope", "scope_value", "team", "window_start", "threshold", "spent_cost",
    "spent_tokens", "limit_cost", "limit_tokens", "top_sessions", "issued_at",
)  # fmt: skip


def alerts_query(
    database: str,
    *,
    team: str | None,
    policy_id: str | None = None,
    alert_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 100,
) -> tuple[str, dict[str, Any]]:
    """Alerts, newest first, one row per alert_id, with their delivery attempts counted."""
    params: dict[str, Any] = {"database": database, "limit": limit}
    conditions = []
    if team is not None:
        conditions.append("team = {team:String}")
        params["team"] = team
    if policy_id is not None:
        conditions.append("policy_id = {policy_id:String}")
        params["policy_id"] = policy_id
    if alert_id is not None:
        conditions.append("alert_id = {alert_id:String}")
        params["alert_id"] = alert_id
    if start is not None:
        conditions.append("issued_at >= {start:DateTime64(6, 'UTC')}")
        params["start"] = start
    if end is not None:
        conditions.append("issued_at < {end:DateTime64(6, 'UTC')}")
        params["end"] = end
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
    latest = (
        f"SELECT {', '.join(ALERT_FIELDS)} FROM {{database:Identifier}}.alerts{where} "
        "ORDER BY alert_id, issued_at DESC LIMIT 1 BY alert_id"
    )
    deliveries = (
        "SELECT alert_id, count() AS delivery_attempts, countIf(ok) AS deliveries_ok FROM ("
        "SELECT alert_id, destination, attempt, argMax(ok, attempted_at) AS ok "
        "FROM {database:Identifier}.alert_deliveries GROUP BY alert_id, destination, attempt) GROUP BY alert_id"
    )
    sql = (
        f"SELECT a.*, d.delivery_attempts AS delivery_attempts, d.deliveries_ok AS deliveries_ok "
        f"FROM ({latest}) AS a LEFT JOIN ({deliveries}) AS d USING alert_id "
        "ORDER BY issued_at DESC, alert_id LIMIT {limit:UInt32}"
    )
    return sql, params


def deliveries_query(database: str, alert_id: str) -> tuple[str, dict[str, Any]]:
    sql = (
        "SELECT destination, attempt, picked.1 AS attempted_at, picked.2 AS ok, picked.3 AS status_code, "
        "picked.4 AS error, picked.5 AS next_attempt_at FROM ("
        "SELECT destination, attempt, argMax(tuple(attempted_at, ok, status_code, error, next_attempt_at), "
        "attempted_at) AS picked FROM {database:Identifier}.alert_deliveries WHERE alert_id = {alert_id:String} "
        "GROUP BY destination, attempt) ORDER BY attempted_at, destination, attempt LIMIT 1000"
    )
    return sql, {"database": database, "alert_id": alert_id}
