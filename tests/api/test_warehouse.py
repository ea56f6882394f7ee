"""Both warehouse adapters for real: migrations, exact Decimals, bound parameters, dedup tokens.

Tests taking `ready` or `any_warehouse_factory` run on the embedded chDB adapter and on the
server adapter (clickhouse-connect over HTTP to the test front in tests/api/clickhouse_http.py,
which carries each request to the same ClickHouse engine)."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import pytest

from api.migrations import load_migrations, migrate
from api.queries import DAILY, DIMENSIONS, HOURLY, chargeback_query, rollup_drift_query, rollup_insert
from api.sink import LEDGER_COLUMNS, PRICED_EVENT_COLUMNS, ledger_row, priced_event_row
from api.warehouse import WarehouseError

pytestmark = pytest.mark.integration


@pytest.fixture
def ready(settings_factory, any_warehouse_factory):
    settings = settings_factory()
    wh = any_warehouse_factory(settings)
    migrate(wh, settings.database)
    return settings, wh


def _raw_count(wh, database):
    return wh.query("SELECT count() AS n FROM {db:Identifier}.priced_events", {"db": database})[0]["n"]


def test_migrations_twice_is_a_no_op(settings_factory, any_warehouse_factory):
    settings = settings_factory()
    wh = any_warehouse_factory(settings)
    every = [m.name for m in load_migrations()]
    assert every[:2] == ["0001_priced_events.sql", "0002_api_keys.sql"]
    assert migrate(wh, settings.database) == every
    assert migrate(wh, settings.database) == []
    rows = wh.query("SELECT version FROM {db:Identifier}.schema_migrations", {"db": settings.database})
    assert sorted(r["version"] for r in rows) == [m.version for m in load_migrations()]
    [table] = wh.query(
        "SELECT engine, sorting_key FROM system.tables WHERE database = {db:String} AND name = 'priced_events'",
        {"db": settings.database},
    )
    assert table["engine"] == "ReplacingMergeTree"
    assert "event_id" in table["sorting_key"]


def test_same_token_lands_once_and_new_token_lands_again(ready, priced_event_factory):
    settings, wh = ready
    rows = [priced_event_row(priced_event_factory(), "t", 0, o) for o in range(5)]
    for _ in range(3):
        wh.insert(settings.database, "priced_events", PRICED_EVENT_COLUMNS, rows, dedup_token="t:0:0:4")
    assert _raw_count(wh, settings.database) == 5
    # A different token is a different block: the rows land again (the report dedupe covers that).
    wh.insert(settings.database, "priced_events", PRICED_EVENT_COLUMNS, rows, dedup_token="t:0:0:4b")
    assert _raw_count(wh, settings.database) == 10


def test_chdb_parses_into_staging_and_leaves_nothing_there(settings_factory, warehouse_factory, priced_event_factory):
    """chDB inserts into a table with LowCardinality columns go through a temporary table of
    plain columns (api/warehouse/chdb.py): the values land as they were sent, and rows left
    there (an insert cut short) never land with the next block."""
    settings = settings_factory()
    wh = warehouse_factory(settings)
    db = settings.database
    migrate(wh, db)
    events = [priced_event_factory(cost="0.1", team=("a", None)[o % 2], tags={"env": f"e{o}"}) for o in range(4)]
    rows = [priced_event_row(e, "t", 0, o) for o, e in enumerate(events)]
    staging = wh._staging_table(db, "priced_events", PRICED_EVENT_COLUMNS)
    assert staging is not None
    wh.command(f"INSERT INTO {staging} (event_id) VALUES ('{'9' * 32}')")  # from an insert cut short
    wh.insert(db, "priced_events", PRICED_EVENT_COLUMNS, rows, dedup_token="t:0:0:3")
    wh.insert(db, "priced_events", PRICED_EVENT_COLUMNS, rows, dedup_token="t:0:0:3")  # a repeat: dropped
    got = wh.query(
        "SELECT event_id, team, tags, toTypeName(team) AS type FROM {db:Identifier}.priced_events ORDER BY kafka_offset",
        {"db": db},
    )
    assert [(r["event_id"], r["team"], r["tags"]) for r in got] == [
        (e.event.event_id, e.event.team, e.event.tags) for e in events
    ]
    assert got[0]["type"] == "LowCardinality(Nullable(String))"
    [left] = wh.query(f"SELECT count() AS n FROM {staging}")
    assert left["n"] == 0
    # a table without LowCardinality columns is inserted directly
    assert wh._staging_table(db, "period_closes", ("period", "closed_at", "closed_by")) is None


def test_decimals_round_trip_exactly_and_sum_exactly(ready, priced_event_factory):
    settings, wh = ready
    costs = ["0.000000000001", "999999.999999999999", "0.1", "0.2", "1E-12"]
    rows = [priced_event_row(priced_event_factory(cost=c), "t", 0, i) for i, c in enumerate(costs)]
    wh.insert(settings.database, "priced_events", PRICED_EVENT_COLUMNS, rows, dedup_token="x")
    [row] = wh.query(
        "SELECT sum(cost) AS total, max(cost) AS top FROM {db:Identifier}.priced_events", {"db": settings.database}
    )
    assert isinstance(row["total"], Decimal)
    assert row["total"] == sum(Decimal(c) for c in costs) == Decimal("1000000.300000000001")
    assert row["top"] == Decimal("999999.999999999999")


def test_parameters_are_bound_not_pasted(ready, priced_event_factory):
    settings, wh = ready
    nasty = "x' OR 1=1 --"
    rows = [priced_event_row(priced_event_factory(team=nasty), "t", 0, 0)]
    wh.insert(settings.database, "priced_events", PRICED_EVENT_COLUMNS, rows)
    sql = "SELECT count() AS n FROM {db:Identifier}.priced_events WHERE team = {team:String}"
    assert wh.query(sql, {"db": settings.database, "team": nasty})[0]["n"] == 1
    assert wh.query(sql, {"db": settings.database, "team": "x"})[0]["n"] == 0


NASTY = ["a\\b", "\\", "tab\there", "line\nbreak", "quote ' and `tick`", "\\'; DROP TABLE x; --", "é€😀", ""]


def test_strings_and_null_bind_as_themselves(ready):
    _settings, wh = ready
    for value in [*NASTY, None]:
        [row] = wh.query("SELECT {v:Nullable(String)} AS v, isNull({v:Nullable(String)}) AS null", {"v": value})
        assert row == {"v": value, "null": value is None}


def test_string_arrays_bind_as_themselves(ready, priced_event_factory):
    settings, wh = ready
    [row] = wh.query("SELECT {v:Array(String)} AS v, {n:Array(UInt64)} AS n", {"v": NASTY, "n": [0, 7, 2**64 - 1]})
    assert row == {"v": NASTY, "n": [0, 7, 2**64 - 1]}
    # the sink's ledger lookup: event_ids in an array parameter, FixedString back as str
    events = [priced_event_factory() for _ in range(3)]
    rows = [ledger_row(priced_event_row(e, "t", 0, i)) for i, e in enumerate(events)]
    wh.insert(settings.database, "event_ledger", LEDGER_COLUMNS, rows)
    ids = [events[0].event.event_id, events[2].event.event_id, "f" * 32]
    found = wh.query(
        "SELECT event_id FROM {db:Identifier}.event_ledger WHERE event_id IN {ids:Array(String)} ORDER BY event_id",
        {"db": settings.database, "ids": ids},
    )
    assert [r["event_id"] for r in found] == sorted(ids[:2])


def test_rollup_insert_with_a_token_lands_once(ready, priced_event_factory):
    settings, wh = ready
    events = [priced_event_factory(cost=f"0.{i}00000000007", step=i * 1800) for i in range(1, 6)]
    rows = [(*ledger_row(priced_event_row(e, "t", 0, i)), "tok") for i, e in enumerate(events)]
    wh.insert(settings.database, "event_ledger", (*LEDGER_COLUMNS, "ledger_token"), rows, dedup_token="tok")
    for _ in range(2):  # a replay sends the same rollup under the same token: dropped
        for table in (HOURLY, DAILY):
            wh.command(*rollup_insert(settings.database, table, "tok", dedup_token=f"tok:{table}"))
    [drift] = wh.query(*rollup_drift_query(settings.database))
    assert drift == {
        "hourly_cost_drift": Decimal(0),
        "hourly_calls_drift": 0,
        "daily_cost_drift": Decimal(0),
        "daily_calls_drift": 0,
    }
    [hourly] = wh.query("SELECT sum(cost) AS c FROM {db:Identifier}.rollup_hourly", {"db": settings.database})
    assert hourly["c"] == sum(e.cost for e in events) == Decimal("1.500000000035")


def test_a_rollup_reads_only_the_part_its_ledger_token_is_in(ready, priced_event_factory):
    """The ledger is ordered by event_id; the bloom filter on ledger_token (sql/0013) lets a
    rollup skip every granule of the parts other inserts wrote."""
    settings, wh = ready
    for token in ("old", "new"):  # two inserts, two parts
        events = [priced_event_factory(step=i) for i in range(3)]
        rows = [(*ledger_row(priced_event_row(e, token, 0, i)), token) for i, e in enumerate(events)]
        wh.insert(settings.database, "event_ledger", (*LEDGER_COLUMNS, "ledger_token"), rows, dedup_token=token)
    plan = "\n".join(
        r["explain"]
        for r in wh.query(
            "EXPLAIN indexes = 1 SELECT count() FROM {db:Identifier}.event_ledger WHERE ledger_token = {t:String}",
            {"db": settings.database, "t": "new"},
        )
    )
    skip = plan[plan.index("Name: ledger_token_bf") :]
    assert "Granules: 1/2" in skip, plan


def test_errors_are_classified(ready):
    _settings, wh = ready
    with pytest.raises(WarehouseError) as info:
        wh.query("SELECT * FROM {db:Identifier}.nope", {"db": "nowhere"})
    assert info.value.code is not None
    assert not info.value.retryable


@pytest.mark.parametrize("dim", sorted(DIMENSIONS))
def test_every_allowed_dimension_runs_and_adds_up(ready, priced_event_factory, dim):
    settings, wh = ready
    events = [
        priced_event_factory(cost=f"0.{i}00000000001", team=["a", None][i % 2], customer=f"c{i % 3}", step=i * 40000)
        for i in range(6)
    ]
    rows = [priced_event_row(e, "t", 0, i) for i, e in enumerate(events)]
    # the same rows twice under two tokens: physically doubled, counted once
    wh.insert(settings.database, "priced_events", PRICED_EVENT_COLUMNS, rows, dedup_token="a")
    wh.insert(settings.database, "priced_events", PRICED_EVENT_COLUMNS, rows, dedup_token="b")
    sql, params = chargeback_query(settings.database, [dim, "team"])
    result = wh.query(sql, params)
    assert sum(r["cost"] for r in result) == sum(e.cost for e in events)
    assert sum(r["calls"] for r in result) == 6
    if dim == "day":  # steps are 40000 s apart: the events fall on 3 days
        assert sorted({str(r["day"]) for r in result}) == ["2026-03-01", "2026-03-02", "2026-03-03"]


def test_a_second_process_on_the_folder_gets_warehouse_locked(settings_factory, warehouse_factory):
    settings = settings_factory()
    warehouse_factory(settings)
    code = (
        "import sys; from pathlib import Path; from api.warehouse import WarehouseLocked\n"
        "from api.warehouse.chdb import ChdbWarehouse\n"
        "try:\n    ChdbWarehouse(Path(sys.argv[1]))\nexcept WarehouseLocked:\n    sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(settings.chdb_path)], capture_output=True, timeout=120)
    assert result.returncode == 3, result.stderr[-500:]
