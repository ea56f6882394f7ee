"""The server adapter (clickhouse-connect over HTTP) against the real engine, beside the embedded one.

ClickHouseWarehouse talks to the test front of tests/api/clickhouse_http.py, which carries each
request to a chDB connection on the same folder the embedded adapter opens: one engine, two
transports. What differs between the adapters is what these tests look at."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from api.migrations import migrate
from api.queries import (
    DAILY,
    HOURLY,
    LEDGER,
    MONEY_MEASURES,
    chargeback_query,
    report_query,
    rollup_drift_query,
    session_events_query,
)
from api.sink import PRICED_EVENT_COLUMNS, priced_event_row
from api.warehouse import WarehouseError, open_warehouse
from schemas.events import EventKind
from tests.api.conftest import sink_until_caught_up
from tests.api.test_reports_pipeline import make_event

pytestmark = pytest.mark.integration

EVENTS = [make_event(i) for i in range(48)]
"""Three days of events (the pipeline tests' generator): teams and customers with gaps, tool
calls, reservations (not spend), across the March/April boundary."""
START = EVENTS[0].event.occurred_at


REPORTS = [
    ((), None, None),
    (("team", "project"), None, None),
    (("team", "customer", "model"), START + timedelta(days=1), START + timedelta(days=2, hours=3)),
    (("day", "agent_type", "tool_name"), None, None),
    (("month", "customer"), None, None),
    (("hour", "team"), START, START + timedelta(hours=20)),
    (("week", "currency"), None, None),
]


def test_sink_and_every_report_agree_across_adapters(
    settings_factory, warehouse_factory, server_warehouse_factory, produce_priced
):
    embedded = settings_factory(sink_batch_seconds=0.3)
    chdb = warehouse_factory(embedded)
    # the same topic into another database of the same engine, through HTTP
    served, server, _front = server_warehouse_factory(
        settings_factory(topic_prefix=embedded.topic_prefix, chdb_path=embedded.chdb_path, sink_batch_seconds=0.3)
    )
    events = EVENTS
    produce_priced(embedded, [*events, *events[:6]])  # a producer retry: duplicates in flight
    for settings, wh in ((embedded, chdb), (served, server)):
        assert migrate(wh, settings.database)
        sink_until_caught_up(settings, wh)

    spend = [e for e in events if e.event.kind is not EventKind.CALL_STARTED]
    total = sum((e.cost for e in spend), Decimal(0))
    compared = 0
    for group_by, start, end in REPORTS:
        for source in (LEDGER, HOURLY, DAILY):
            if source == DAILY and "hour" in group_by:
                continue
            answers = [
                wh.query(*report_query(settings.database, group_by, start, end, source=source)[:2])
                for settings in (embedded, served)
                for wh in (chdb, server)
            ]
            assert answers[0], (group_by, source)
            assert all(a == answers[0] for a in answers[1:]), (group_by, source)
            for row in answers[0]:
                assert all(type(row[m]) is Decimal for m in MONEY_MEASURES)
            if start is None and end is None:
                assert sum(r["cost"] for r in answers[0]) == total
                assert sum(r["calls"] for r in answers[0]) == len(spend)
            compared += 1
    assert compared == 20
    # the raw-table report, the session detail and the drift check, read every which way
    for sql_of in (
        lambda db: chargeback_query(db, ["team", "day"]),
        lambda db: session_events_query(db, "sess-1"),
        lambda db: rollup_drift_query(db),
        lambda db: (
            "SELECT * EXCEPT (inserted_at) FROM {db:Identifier}.event_ledger ORDER BY event_id",
            {"db": db},
        ),
    ):
        answers = [wh.query(*sql_of(s.database)) for s in (embedded, served) for wh in (chdb, server)]
        assert answers[0] and all(a == answers[0] for a in answers[1:])
    [drift] = server.query(*rollup_drift_query(served.database))
    assert set(drift.values()) == {0}


def test_a_replay_through_http_lands_nothing_twice(settings_factory, server_warehouse_factory, produce_priced):
    # Every record is read before a batch is cut (up to 10,000 records or 3 s), so both reads make
    # the same block of every partition, under the same token. (Cut at 0.3 s, a batch held the
    # partitions whose records had come by then: other blocks, other tokens, a second copy.)
    served, server, _front = server_warehouse_factory(settings_factory(sink_batch_seconds=3.0))
    migrate(server, served.database)
    events = EVENTS
    produce_priced(served, events)
    sink_until_caught_up(served, server)
    before = server.query(*report_query(served.database, ("team", "day"), source=DAILY)[:2])
    # another consumer group reads the whole topic again: same block, same token, dropped
    sink_until_caught_up(served.model_copy(update={"sink_group": served.sink_group + "-again"}), server)
    assert server.query(*report_query(served.database, ("team", "day"), source=DAILY)[:2]) == before
    [raw] = server.query("SELECT count() AS n FROM {db:Identifier}.priced_events", {"db": served.database})
    assert raw["n"] == len(events)


def test_threads_share_one_client(settings_factory, server_warehouse_factory):
    # The API's request threads and the sink thread share one warehouse.
    _served, server, _front = server_warehouse_factory(settings_factory())
    results: list[int] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(15):
                results.append(server.query("SELECT {i:UInt32} AS i, sleep(0.001) AS s", {"i": i})[0]["i"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(results) == sorted(i for i in range(4) for _ in range(15))


def test_large_blocks_and_parameters_cross_the_wire(settings_factory, server_warehouse_factory, priced_event_factory):
    served, server, front = server_warehouse_factory(settings_factory())
    migrate(server, served.database)
    # about 1.6 MB of Native: chDB cuts data inline in a statement at about 256 KiB, so this
    # passes only if the front streams the insert (send_insert), as a server would
    events = [priced_event_factory(tags={"note": "x" * 128}) for _ in range(4000)]
    rows = [priced_event_row(e, "t", 0, i) for i, e in enumerate(events)]
    for _ in range(2):
        server.insert(served.database, "priced_events", PRICED_EVENT_COLUMNS, rows, dedup_token="big")
    ids = [e.event.event_id for e in events]  # about 140 kB of parameter: sent as a form
    [row] = server.query(
        "SELECT count() AS n, sum(cost) AS cost FROM {db:Identifier}.priced_events WHERE event_id IN {ids:Array(String)}",
        {"db": served.database, "ids": ids},
    )
    assert row == {"n": 4000, "cost": Decimal("0.001234567891") * 4000}
    # the driver's defaults were exercised: lz4 both ways, a streamed (chunked) insert, a form
    assert front.wire["request:lz4"] >= 2 and front.wire["response:lz4"] >= 1
    assert front.wire["chunked"] >= 2 and front.wire["form"] >= 1 and front.wire["insert:stream"] >= 2


def test_uncompressed_dsn_and_server_errors(settings_factory, server_warehouse_factory):
    served, _server, front = server_warehouse_factory(settings_factory())
    plain = open_warehouse(served.model_copy(update={"clickhouse_url": f"{served.clickhouse_url}?compress=False"}))
    try:
        seen = dict(front.wire)
        [row] = plain.query("SELECT toDecimal128('0.000000000001', 12) * 3 AS c, now64(6) AS t")
        assert row["c"] == Decimal("0.000000000003")
        assert row["t"].tzinfo is not None and abs(row["t"] - datetime.now(UTC)) < timedelta(minutes=5)
        assert {k: v for k, v in front.wire.items() if "lz4" in k} == {k: v for k, v in seen.items() if "lz4" in k}
        with pytest.raises(WarehouseError) as info:
            plain.query("SELECT * FROM {db:Identifier}.nope", {"db": "system"})
        assert info.value.code == 60 and not info.value.retryable
        assert "UNKNOWN_TABLE" in str(info.value)
    finally:
        plain.close()


def test_naive_datetimes_are_utc_whatever_the_local_zone(settings_factory, server_warehouse_factory, monkeypatch):
    served, server, _front = server_warehouse_factory(settings_factory())
    server.command("CREATE DATABASE {db:Identifier}", {"db": served.database})
    server.command("CREATE TABLE {db:Identifier}.t (at DateTime64(6, 'UTC')) ENGINE = Memory", {"db": served.database})
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        # the chDB adapter reads a naive datetime as UTC; so must this one
        server.insert(served.database, "t", ["at"], [[datetime(2026, 3, 1, 12, 0, 0, 250)]])
    finally:
        monkeypatch.undo()
        time.tzset()
    rows = server.query("SELECT at FROM {db:Identifier}.t", {"db": served.database})
    assert rows == [{"at": datetime(2026, 3, 1, 12, 0, 0, 250, tzinfo=UTC)}]


def test_an_insert_is_one_request_once_its_table_is_known(settings_factory, server_warehouse_factory):
    served, server, front = server_warehouse_factory(settings_factory())
    server.command("CREATE DATABASE {db:Identifier}", {"db": served.database})
    server.command("CREATE TABLE {db:Identifier}.t (a UInt8) ENGINE = Memory", {"db": served.database})
    server.insert(served.database, "t", ["a"], [[1]])  # DESCRIBE, then INSERT
    sent = front.wire["requests"]
    server.insert(served.database, "t", ["a"], [[2]])
    assert front.wire["requests"] == sent + 1
    # a column added later is looked up again, not guessed
    server.command("ALTER TABLE {db:Identifier}.t ADD COLUMN b String", {"db": served.database})
    server.insert(served.database, "t", ["a", "b"], [[3, "x"]])
    rows = server.query("SELECT a, b FROM {db:Identifier}.t ORDER BY a", {"db": served.database})
    assert rows == [{"a": 1, "b": ""}, {"a": 2, "b": ""}, {"a": 3, "b": "x"}]
    with pytest.raises(WarehouseError, match="no column 'c'"):
        server.insert(served.database, "t", ["c"], [[1]])
