"""Priced events through real Kafka and the sink into chDB, read back by GET /v1/chargeback."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import orjson
import pytest
from confluent_kafka import Consumer
from fastapi.testclient import TestClient

from api.app import create_app
from api.migrations import migrate
from api.sink import Sink, SinkError
from schemas.events import DeadLetter
from schemas.topics import COST_EVENTS_DLQ, topic_name
from tests.api.conftest import SinkThread, sink_until_caught_up, sink_until_crash_before_commit, wait_caught_up

pytestmark = pytest.mark.integration


def _expected(events, *dims):
    out = defaultdict(lambda: [Decimal(0), Decimal(0), 0, 0, 0])
    for e in events:
        acc = out[tuple(getattr(e.event, d) for d in dims)]
        acc[0] += e.cost
        acc[1] += e.list_cost
        acc[2] += e.event.input_tokens
        acc[3] += e.event.output_tokens
        acc[4] += 1
    return dict(out)


def _report(client, **params):
    response = client.get("/v1/chargeback", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _raw_count(wh, database):
    return wh.query("SELECT count() AS n FROM {db:Identifier}.priced_events", {"db": database})[0]["n"]


def test_chargeback_totals_are_exact_and_duplicates_count_once(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced
):
    settings = settings_factory(sink_batch_seconds=0.3, auth="disabled")
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    teams = ["payments", "search", None]
    events = [
        priced_event_factory(
            team=teams[i % 3],
            project=f"p{i % 2}",
            cost=f"0.{i:03d}000000007",
            list_cost=f"0.{i:03d}100000001",
            input_tokens=100 + i,
            output_tokens=i,
            workflow_id=f"wf-{i % 4}",
        )
        for i in range(60)
    ]
    # The same event_ids again (a producer retry / replay) on top of the originals.
    produce_priced(settings, events + events[:25])
    sink = sink_until_caught_up(settings, wh)
    assert sink.rows_inserted == 85

    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        body = _report(client, group_by="team,project")
    expected = _expected(events, "team", "project")
    got = {(r["group"]["team"], r["group"]["project"]): r for r in body["rows"]}
    assert set(got) == set(expected)
    for key, (cost, list_cost, tin, tout, calls) in expected.items():
        row = got[key]
        assert Decimal(row["cost"]) == cost
        assert Decimal(row["list_cost"]) == list_cost
        assert (row["input_tokens"], row["output_tokens"], row["calls"]) == (tin, tout, calls)
    assert Decimal(body["total"]["cost"]) == sum(e.cost for e in events)
    assert body["total"]["calls"] == 60
    assert isinstance(body["total"]["cost"], str)


def test_period_filter_and_day_dimension(settings_factory, warehouse_factory, priced_event_factory, produce_priced):
    settings = settings_factory(sink_batch_seconds=0.3, auth="disabled")
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    events = [priced_event_factory(cost="1.000000000001", step=i) for i in range(3)]
    events.append(priced_event_factory(cost="0.000000000001", step=9, team="tiny"))
    produce_priced(settings, events)
    sink_until_caught_up(settings, wh)
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        # events occur at BASE_TIME + 0, 1, 2 s; [+1 s, +2 s) holds exactly one
        body = _report(client, group_by="day", **{"from": "2026-03-01T12:00:01Z", "to": "2026-03-01T12:00:02Z"})
        assert body["rows"] == [
            {
                "group": {"day": "2026-03-01"},
                "cost": "1.000000000001",
                "list_cost": "1.000000000001",
                "input_tokens": 1000,
                "output_tokens": 200,
                "cache_read_tokens": 0,
                "cache_write_tokens": 0,
                "reasoning_tokens": 0,
                "calls": 1,
            }
        ]
        # naive datetimes are UTC; a zone offset is honoured
        body = _report(client, group_by="team", **{"from": "2026-03-01T14:00:00+02:00"})
        assert body["total"]["cost"] == "3.000000000004"
        assert [(r["group"]["team"], r["cost"]) for r in body["rows"]] == [
            ("payments", "3.000000000003"),
            ("tiny", "0.000000000001"),
        ]


def test_unknown_group_by_is_422_naming_the_field(settings_factory, warehouse_factory):
    settings = settings_factory(auth="disabled")
    wh = warehouse_factory(settings)
    with TestClient(create_app(settings, wh, with_sink=False)) as client:  # the lifespan migrates
        response = client.get("/v1/chargeback", params={"group_by": "team,password"})
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "group_by"
        assert "password" in response.json()["error"]["message"]
        response = client.get("/v1/chargeback", params={"from": "not-a-date"})
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "from"
        response = client.get("/v1/chargeback", params={"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"})
        assert (response.status_code, response.json()["error"]["field"]) == (422, "to")
        empty = client.get("/v1/chargeback").json()
        assert (empty["rows"], empty["total"]["cost"]) == ([], "0.000000000000")
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/docs").status_code == 200
        assert "/v1/chargeback" in client.get("/openapi.json").json()["paths"]


def test_crash_between_insert_and_commit_changes_no_total(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced
):
    # One partition and a batch larger than the input: both runs cut the same chunk, so the
    # replay carries the same deduplication token and the engine drops it.
    settings = settings_factory(sink_batch_rows=1000, sink_batch_seconds=1.0, auth="disabled")
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    events = [priced_event_factory(cost=f"0.{i:02d}0000000003", team=f"t{i % 3}") for i in range(40)]
    produce_priced(settings, events, partition=0)

    crashing = sink_until_crash_before_commit(settings, wh)
    assert crashing.rows_inserted == 40
    assert _raw_count(wh, settings.database) == 40

    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        before = _report(client, group_by="team")
        replayed = sink_until_caught_up(settings, wh)
        after = _report(client, group_by="team")
    assert replayed.rows_inserted == 40  # the records were read and sent again ...
    assert _raw_count(wh, settings.database) == 40  # ... and the engine dropped the repeated block
    assert after == before
    assert Decimal(after["total"]["cost"]) == sum(e.cost for e in events)


def test_invalid_records_go_to_the_dlq_and_the_rest_lands(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced
):
    settings = settings_factory(sink_batch_seconds=0.3, auth="disabled")
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    good = [priced_event_factory(cost="2.5") for _ in range(4)]
    bad_cost = orjson.loads(good[0].model_dump_json())
    bad_cost["cost"] = "1.5e400"
    produce_priced(settings, [good[0], b"{not json", orjson.dumps(bad_cost), *good[1:]], partition=1)
    sink = sink_until_caught_up(settings, wh)
    assert sink.dead_letters == 2

    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "dlq-reader", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic_name(settings.topic_prefix, COST_EVENTS_DLQ)])
    letters = []
    try:
        for _ in range(100):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                letters.append(DeadLetter.model_validate_json(msg.value()))
            if len(letters) == 2:
                break
    finally:
        consumer.close()
    assert sorted((d.partition, d.offset, d.error_code) for d in letters) == [
        (1, 1, "malformed_json"),
        (1, 2, "invalid_priced_event"),
    ]
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        assert _report(client, group_by="team")["total"]["cost"] == "10.000000000000"


def test_app_runs_the_sink_in_process(settings_factory, priced_event_factory, produce_priced):
    settings = settings_factory(sink_batch_seconds=0.2, auth="disabled")
    events = [priced_event_factory(cost="0.333333333333") for _ in range(9)]
    produce_priced(settings, events)
    with TestClient(create_app(settings, with_sink=True)) as client:
        wait_caught_up(settings)
        assert _report(client, group_by="")["total"]["cost"] == "2.999999999997"
        health = client.get("/healthz").json()
        assert health["sink"]["rows_inserted"] == 9
        metrics = client.get("/metrics").text
        assert "agentledger_sink_rows_inserted_total" in metrics


def test_non_retryable_insert_error_stops_the_sink_without_commit(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced
):
    settings = settings_factory(sink_batch_seconds=0.2, auth="disabled")
    wh = warehouse_factory(settings)  # no migration: the table is missing
    produce_priced(settings, [priced_event_factory()])
    runner = SinkThread(Sink(settings, wh))
    runner.thread.join(60)
    assert isinstance(runner.error, SinkError)
    from tests.api.conftest import committed_offsets

    assert all(o < 0 for o in committed_offsets(settings).values())


class FlakyWarehouse:
    """The real chDB warehouse behind a few retryable insert failures (too many parts)."""

    def __init__(self, inner, failures):
        self.inner, self.failures, self.attempts = inner, failures, 0
        self.backend = inner.backend

    def insert(self, *args, **kwargs):
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            from api.warehouse import error_from_message

            raise error_from_message("Code: 252. DB::Exception: Too many parts")
        return self.inner.insert(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_retryable_insert_errors_back_off_and_land_once(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced
):
    settings = settings_factory(sink_batch_seconds=0.2, auth="disabled")
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    flaky = FlakyWarehouse(wh, failures=3)
    events = [priced_event_factory(cost="0.5") for _ in range(6)]
    produce_priced(settings, events, partition=2)
    sink_until_caught_up(settings, flaky)
    assert flaky.attempts >= 4
    assert _raw_count(wh, settings.database) == 6
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        assert _report(client, group_by="model")["rows"][0]["cost"] == "3.000000000000"
