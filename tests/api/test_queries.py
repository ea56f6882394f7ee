from __future__ import annotations

from datetime import UTC, datetime

import pytest

from api.errors import InvalidParameter
from api.queries import DIMENSIONS, chargeback_query, parse_group_by

pytestmark = pytest.mark.unit


def test_group_by_parses_and_dedupes():
    assert parse_group_by("team, project,team,,day") == ("team", "project", "day")
    assert parse_group_by(["team,model", "provider"]) == ("team", "model", "provider")
    assert parse_group_by("") == ()


@pytest.mark.parametrize("bad", ["cost", "team;DROP TABLE x", "event_id", "Team", "1"])
def test_unknown_group_by_is_refused_naming_the_field(bad):
    with pytest.raises(InvalidParameter) as info:
        parse_group_by(f"team,{bad}")
    assert info.value.field == "group_by"
    assert info.value.code == "invalid_parameter"
    assert repr(bad.strip()) in info.value.message


def test_allow_list_is_the_documented_one():
    assert set(DIMENSIONS) == {
        "team", "project", "customer", "agent_type", "model", "provider", "tool_name", "session_id", "day",
    }  # fmt: skip


def test_chargeback_sql_text_and_bound_params():
    start = datetime(2026, 3, 1, tzinfo=UTC)
    end = datetime(2026, 4, 1, tzinfo=UTC)
    sql, params = chargeback_query("db_x", ["team", "day"], start, end)
    assert params == {"database": "db_x", "start": start, "end": end}
    assert sql == (
        "SELECT team AS team, toDate(occurred_at) AS day, sum(cost) AS cost, sum(list_cost) AS list_cost, "
        "sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
        "sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens, "
        "sum(reasoning_tokens) AS reasoning_tokens, countIf(kind IN ('llm_call', 'tool_call')) AS calls FROM ("
        "SELECT picked.1 AS team, picked.2 AS occurred_at, picked.3 AS kind, picked.4 AS cost, "
        "picked.5 AS list_cost, picked.6 AS input_tokens, picked.7 AS output_tokens, picked.8 AS cache_read_tokens, "
        "picked.9 AS cache_write_tokens, picked.10 AS reasoning_tokens FROM ("
        "SELECT event_id, argMax(tuple(team, occurred_at, kind, cost, list_cost, input_tokens, output_tokens, "
        "cache_read_tokens, cache_write_tokens, reasoning_tokens), priced_at) AS picked "
        "FROM {database:Identifier}.priced_events "
        "WHERE kind != 'call_started' AND occurred_at >= {start:DateTime64(6, 'UTC')} "
        "AND occurred_at < {end:DateTime64(6, 'UTC')} "
        "GROUP BY event_id)) GROUP BY team, day ORDER BY team, day"
    )


def test_no_value_is_pasted_into_sql():
    nasty = "x' OR 1=1 --"
    sql, params = chargeback_query("db_x", ["team"], None, None, filters={"team": nasty})
    assert nasty not in sql
    assert "db_x" not in sql
    assert "team = {f0:String}" in sql
    assert params["f0"] == nasty


def test_no_group_by_gives_one_total_row_without_group_clause():
    sql, params = chargeback_query("db_x", [])
    assert " GROUP BY event_id)" in sql
    assert not sql.endswith("ORDER BY ")
    assert "WHERE kind != 'call_started' GROUP BY event_id" in sql
    assert params == {"database": "db_x"}


def test_filter_on_unknown_dimension_is_refused():
    with pytest.raises(InvalidParameter) as info:
        chargeback_query("db_x", ["team"], filters={"cost": "1"})
    assert info.value.field == "cost"
