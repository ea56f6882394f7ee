"""The sink's fast path: records as the worker writes them become rows without pydantic, and
land exactly as the model's rows do; anything else takes the model's path or, when the
warehouse refuses a chunk, is found record by record and dead-lettered."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.migrations import migrate
from api.sink import (
    PRICED_EVENT_COLUMNS,
    Sink,
    fast_row,
    fast_shape_ok,
    field_shape,
    priced_event_row,
)
from api.warehouse.chdb import ChdbWarehouse
from schemas import codec
from schemas.events import MAX_MONEY, CostEvent, DeadLetter, EventKind, PricedEvent
from schemas.topics import COST_EVENTS_DLQ, topic_name
from tests.api.conftest import SinkThread, sink_until_caught_up, sink_until_crash_before_commit, wait_caught_up

DATABASE = "fast"

# -- generated events: every field, every kind, the encodings that are easy to get wrong -------

_names = st.from_regex(r"\A[\x21-\x7e][\x20-\x7e]{0,24}\Z")
_ids = st.from_regex(r"\A[0-9a-f]{32}\Z")
_tokens = st.integers(min_value=0, max_value=100_000_000)
_zones = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
_datetimes = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1), timezones=_zones)


def _money(min_value: Decimal) -> st.SearchStrategy[Decimal]:
    # quantized (the worker's '0E-12', '0.007722500000') and not ('1E-12', '2.5', '1E+2')
    return st.one_of(
        st.decimals(min_value=min_value, max_value=MAX_MONEY, places=12),
        st.integers(min_value=0, max_value=12).flatmap(
            lambda places: st.decimals(min_value=min_value, max_value=MAX_MONEY, places=places)
        ),
        st.sampled_from([Decimal("1E-12"), Decimal("0E-12"), Decimal("1E+2"), Decimal("0.000000000001")]),
    )


_event_fields: dict[str, st.SearchStrategy[Any]] = {
    "occurred_at": _datetimes,
    "received_at": st.none() | _datetimes,
    "session_id": _names,
    "thread_id": st.none() | _names,
    "workflow_id": _names,
    "step": st.integers(min_value=0, max_value=10_000_000),
    "step_name": _names,
    "agent_type": _names,
    "team": st.none() | _names,
    "project": st.none() | _names,
    "customer": st.none() | _names,
    "tags": st.dictionaries(
        st.from_regex(r"\A[A-Za-z0-9_.:/-]{1,12}\Z"), st.text(max_size=20), max_size=4
    ),  # values: any text, "quotes", \\ and non-ASCII
    "provider": st.none() | _names,
    "input_tokens": _tokens,
    "output_tokens": _tokens,
    "cache_read_tokens": _tokens,
    "cache_write_tokens": _tokens,
    "reasoning_tokens": _tokens,
    "latency_ms": st.none() | st.integers(min_value=0, max_value=3_600_000),
    "streamed": st.booleans(),
    "cache_hit": st.booleans(),
    "duration_ms": st.none() | st.integers(min_value=0, max_value=3_600_000),
    "tool_fee": st.none() | _money(Decimal(0)),
    "error": st.booleans(),
    "max_output_tokens": st.none() | _tokens,
    "estimated_cost": st.none() | _money(Decimal(0)),
    "reported_cost": st.none() | _money(Decimal(0)),
}


@st.composite
def priced_events(draw: st.DrawFn) -> PricedEvent:
    kind = draw(st.sampled_from(list(EventKind)))
    fields = {name: draw(strategy) for name, strategy in _event_fields.items()}
    fields["model"] = draw(_names if kind in (EventKind.LLM_CALL, EventKind.CALL_STARTED) else st.none() | _names)
    fields["tool_name"] = draw(_names if kind is EventKind.TOOL_CALL else st.none() | _names)
    fields["settles"] = draw(_ids if kind is EventKind.CALL_ABORTED else st.none() | _ids)
    if kind is EventKind.ADJUSTMENT:
        fields["adjustment_amount"] = draw(_money(-MAX_MONEY))
        fields["adjustment_list_amount"] = draw(st.none() | _money(-MAX_MONEY))
        fields["reason"] = draw(_names)
    event = CostEvent(event_id=draw(_ids), kind=kind, **fields)
    return PricedEvent(
        event=event,
        cost=draw(_money(-MAX_MONEY)),
        list_cost=draw(_money(-MAX_MONEY)),
        input_cost=draw(_money(-MAX_MONEY)),
        output_cost=draw(_money(-MAX_MONEY)),
        price_source=draw(st.sampled_from(["genai-prices", "rate-card", "fallback", "none"])),
        price_version=draw(_names),
        unpriced=draw(st.booleans()),
        late=draw(st.booleans()),
        clamped=draw(st.booleans()),
        priced_at=draw(_datetimes),
    )


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[ChdbWarehouse]:
    # per test, closed at its end: a process opens one chDB folder at a time
    wh = ChdbWarehouse(tmp_path / "chdb")
    migrate(wh, DATABASE)
    # priced_events' columns in a table that keeps every row: priced_events itself replaces
    # rows of one event_id in the background, and generated ids repeat
    wh.command(f"CREATE TABLE {DATABASE}.landed AS {DATABASE}.priced_events ENGINE = MergeTree ORDER BY tuple()")
    yield wh
    wh.close()


_topics = itertools.count()


def _land(wh: ChdbWarehouse, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Insert rows whose kafka_topic is a fresh name and read them back in offset order."""
    wh.insert(DATABASE, "landed", PRICED_EVENT_COLUMNS, rows)
    return wh.query(
        "SELECT * EXCEPT (kafka_topic, inserted_at) FROM {db:Identifier}.landed "
        "WHERE kafka_topic = {t:String} ORDER BY kafka_offset",
        {"db": DATABASE, "t": rows[0][-3]},
    )


def _both_paths(wh: ChdbWarehouse, events: list[PricedEvent]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    blobs = [codec.encode(e) for e in events]
    fast_topic, model_topic = f"fast-{next(_topics)}", f"model-{next(_topics)}"
    fast_rows = []
    for offset, blob in enumerate(blobs):
        doc = orjson.loads(blob)
        assert fast_shape_ok(doc), blob
        fast_rows.append(fast_row(doc, fast_topic, 0, offset))
    model_rows = [
        priced_event_row(codec.decode(PricedEvent, blob), model_topic, 0, offset) for offset, blob in enumerate(blobs)
    ]
    return _land(wh, fast_rows), _land(wh, model_rows)


@pytest.mark.unit
@settings(
    max_examples=30,
    deadline=None,
    # one warehouse for every example is the point: each example lands under topics of its own
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(events=st.lists(priced_events(), min_size=1, max_size=25))
def test_the_fast_row_lands_as_the_model_row(warehouse, events):
    fast, model = _both_paths(warehouse, events)
    assert len(fast) == len(events)
    assert fast == model
    # and both are the event itself, to the microsecond and the last decimal
    for row, event in zip(fast, events, strict=True):
        assert row["occurred_at"] == event.event.occurred_at
        assert row["priced_at"] == event.priced_at
        assert row["cost"] == event.cost
        assert row["tags"] == event.event.tags


@pytest.mark.unit
def test_datetimes_without_a_fraction_keep_their_second(warehouse, priced_event_factory):
    whole = datetime(2026, 3, 1, 12, 0, 53, tzinfo=UTC)
    events = [
        priced_event_factory(occurred_at=whole, received_at=whole + timedelta(microseconds=1)),
        priced_event_factory(occurred_at=whole + timedelta(microseconds=999_999), received_at=None),
    ]
    blob = codec.encode(events[0])
    assert b'"occurred_at":"2026-03-01T12:00:53Z"' in blob  # pydantic-core leaves out a zero fraction
    fast, model = _both_paths(warehouse, events)
    assert fast == model
    assert [r["occurred_at"] for r in fast] == [whole, whole + timedelta(microseconds=999_999)]
    assert [r["received_at"] for r in fast] == [whole + timedelta(microseconds=1), None]


@pytest.mark.unit
def test_a_z_and_an_offset_store_the_same_instant(warehouse):
    # The worker writes `...Z` (pydantic-core); records written before, by orjson, say `+00:00`,
    # and a partition being replayed holds both. The sink passes the text through as it came.
    at = datetime(2026, 3, 1, 12, 0, 53, tzinfo=UTC)
    cases = {
        "2026-03-01T12:00:53Z": at,
        "2026-03-01T12:00:53+00:00": at,
        "2026-03-01T12:00:53.000001Z": at + timedelta(microseconds=1),
        "2026-03-01T12:00:53.000001+00:00": at + timedelta(microseconds=1),
        "2026-03-01T12:00:53.999999Z": at + timedelta(microseconds=999_999),
        "2026-03-01T12:00:53.500000+00:00": at + timedelta(microseconds=500_000),
        "2026-03-01T23:59:59.999999Z": datetime(2026, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC),
    }
    template = orjson.loads(codec.encode(PricedEvent.model_validate(_one_priced_event())))
    topic = f"text-{next(_topics)}"
    rows = []
    for offset, text in enumerate(cases):
        doc = {**template, "priced_at": text, "event": {**template["event"], "occurred_at": text}}
        assert fast_shape_ok(doc)
        rows.append(fast_row(doc, topic, 0, offset))
    landed = _land(warehouse, rows)
    assert [(r["occurred_at"], r["priced_at"]) for r in landed] == [(v, v) for v in cases.values()]
    assert codec.encode(PricedEvent.model_validate(_one_priced_event())).count(b'Z"') == 3  # the worker's text


def _one_priced_event() -> dict[str, Any]:
    at = datetime(2026, 3, 1, 12, 0, 53, tzinfo=UTC)
    event = CostEvent(
        event_id="0" * 32,
        kind=EventKind.LLM_CALL,
        occurred_at=at,
        received_at=at,
        session_id="s",
        workflow_id="w",
        step=0,
        step_name="llm",
        agent_type="a",
        model="gpt-4o",
    )
    return {
        "event": event,
        "cost": Decimal("0.1"),
        "list_cost": Decimal("0.1"),
        "price_source": "genai-prices",
        "price_version": "v",
        "priced_at": at,
    }


@pytest.mark.unit
def test_python_values_still_encode(warehouse):
    # what other callers and the model's path insert: Decimals, aware datetimes in any zone, naive
    # ones (UTC), maps, None
    plus_two = timezone(timedelta(hours=2))
    wh = warehouse
    wh.command(f"CREATE TABLE IF NOT EXISTS {DATABASE}.values (c Decimal(38, 12), n Nullable(Decimal(38, 12)), "
               "t DateTime64(6, 'UTC'), u DateTime64(6, 'UTC'), m Map(String, String), i UInt64) "
               "ENGINE = MergeTree ORDER BY i")  # fmt: skip
    rows = [
        (Decimal("1E-12"), None, datetime(2026, 3, 1, 14, 0, 0, 7, tzinfo=plus_two), datetime(2026, 3, 1), {}, 1),
        (Decimal("-123456789.5"), Decimal(0), datetime(2026, 3, 1, 23, 30, tzinfo=UTC), datetime(2026, 3, 1, 0, 0, 1), {"a\\'\"": "é"}, 2),
    ]  # fmt: skip
    wh.insert(DATABASE, "values", ("c", "n", "t", "u", "m", "i"), rows)
    got = wh.query("SELECT c, n, t, u, m FROM {db:Identifier}.values ORDER BY i", {"db": DATABASE})
    assert [tuple(r.values()) for r in got] == [
        (Decimal("1E-12"), None, datetime(2026, 3, 1, 12, 0, 0, 7, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC), {}),
        (Decimal("-123456789.5"), Decimal(0), datetime(2026, 3, 1, 23, 30, tzinfo=UTC),
         datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC), {"a\\'\"": "é"}),
    ]  # fmt: skip


@pytest.mark.unit
def test_the_shape_is_derived_from_the_models():
    fields, must = field_shape(CostEvent)
    assert fields == set(CostEvent.model_fields)
    # required, or a default that is not None: the encoder (exclude_none) always writes them
    assert {"event_id", "kind", "occurred_at", "schema_version", "input_tokens", "tags", "streamed"} <= must
    assert not {"team", "received_at", "tool_fee", "adjustment_list_amount"} & must
    assert field_shape(PricedEvent)[1] == set(PricedEvent.model_fields)  # every one is always written


@pytest.mark.unit
def test_the_shape_check_sends_everything_else_to_the_model(priced_event_factory):
    good = orjson.loads(codec.encode(priced_event_factory(team=None)))
    assert fast_shape_ok(good)

    def changed(change: Any) -> Any:
        doc = orjson.loads(orjson.dumps(good))
        change(doc)
        return doc

    refused = {
        "unknown key in the event": changed(lambda d: d["event"].update(prompt="tell me")),
        "unknown key around it": changed(lambda d: d.update(extra=1)),
        "required event field missing": changed(lambda d: d["event"].pop("session_id")),
        "defaulted event field missing": changed(lambda d: d["event"].pop("input_tokens")),
        "required price missing": changed(lambda d: d.pop("cost")),
        "defaulted price missing": changed(lambda d: d.pop("currency")),
        "schema version 2": changed(lambda d: d["event"].update(schema_version=2)),
        "schema version true": changed(lambda d: d["event"].update(schema_version=True)),
        "schema version text": changed(lambda d: d["event"].update(schema_version="1")),
        "event not an object": changed(lambda d: d.update(event=[1])),
    }
    for what, doc in refused.items():
        assert not fast_shape_ok(doc), what
    for doc in (None, [], "x", 1, {}):
        assert not fast_shape_ok(doc)
    # a None field left out is None in the row, as the model's row has it
    row = dict(zip(PRICED_EVENT_COLUMNS, fast_row(good, "t", 2, 9), strict=True))
    assert (row["team"], row["thread_id"], row["kafka_partition"], row["kafka_offset"]) == (None, None, 2, 9)


# -- through Kafka: bad records never stall a partition --------------------------------------


def _letters(settings: Any, n: int) -> list[DeadLetter]:
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "dlq-reader", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic_name(settings.topic_prefix, COST_EVENTS_DLQ)])
    letters: list[DeadLetter] = []
    try:
        for _ in range(120):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                letters.append(DeadLetter.model_validate_json(msg.value()))
            if len(letters) >= n:
                break
    finally:
        consumer.close()
    return sorted(letters, key=lambda d: d.offset)


def _total(wh: Any, database: str) -> tuple[int, Decimal]:
    [row] = wh.query("SELECT count() AS n, sum(cost) AS cost FROM {db:Identifier}.event_ledger", {"db": database})
    return row["n"], row["cost"]


def _raw(event: PricedEvent, change: Any) -> bytes:
    doc = orjson.loads(codec.encode(event))
    change(doc)
    return orjson.dumps(doc)


@pytest.mark.integration
def test_bad_records_are_dead_lettered_with_the_models_reason_and_the_rest_lands(
    settings_factory, any_warehouse_factory, priced_event_factory, produce_priced
):
    # chunks of offsets 0-2, 3-5, 6-8: each fault is caught on its own
    settings = settings_factory(sink_batch_rows=3, sink_batch_seconds=0.3, auth="disabled")
    wh = any_warehouse_factory(settings)
    migrate(wh, settings.database)
    good = [priced_event_factory(cost=f"0.{i:02d}0000000001") for i in range(9)]
    records: list[PricedEvent | bytes] = [
        good[0],
        # the shape check sends these to the model
        _raw(good[1], lambda d: d["event"].update(prompt="secret")),
        _raw(good[2], lambda d: d["event"].pop("session_id")),
        good[3],
        # shaped right, values the warehouse refuses: the chunk is checked record by record
        _raw(good[4], lambda d: d["event"].update(input_tokens="lots")),
        _raw(good[5], lambda d: d.update(cost="12.5.3")),
        _raw(good[6], lambda d: d.update(cost=None)),  # not a silent 0 (input_format_null_as_default = 0)
        good[7],
        good[8],
    ]
    produce_priced(settings, records, partition=0)
    sink = sink_until_caught_up(settings, wh)
    assert sink.dead_letters == 5
    letters = _letters(settings, 5)
    assert [(d.offset, d.error_code) for d in letters] == [(o, "invalid_priced_event") for o in (1, 2, 4, 5, 6)]
    for letter, field in zip(letters, ("prompt", "session_id", "input_tokens", "cost", "cost"), strict=True):
        assert field in letter.reason
        assert letter.partition == 0
    landed = [good[i] for i in (0, 3, 7, 8)]
    assert _total(wh, settings.database) == (4, sum(e.cost for e in landed))
    [raw] = wh.query("SELECT count() AS n FROM {db:Identifier}.priced_events", {"db": settings.database})
    assert raw["n"] == 4


@pytest.mark.integration
def test_a_refused_chunk_is_cut_the_same_way_on_replay(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced
):
    # crash between insert and commit with a bad value in the chunk: the replay refuses, checks
    # and rebuilds the same chunk, so its block carries the same token and content and is dropped
    settings = settings_factory(sink_batch_rows=1000, sink_batch_seconds=1.0, auth="disabled")
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    good = [priced_event_factory(cost="0.25", team=f"t{i % 3}") for i in range(12)]
    bad = _raw(good[5], lambda d: d["event"].update(output_tokens=-3))
    produce_priced(settings, [*good[:5], bad, *good[6:]], partition=0)

    crashing = sink_until_crash_before_commit(settings, wh)
    assert (crashing.rows_inserted, crashing.dead_letters) == (11, 1)

    replay = SinkThread(Sink(settings, wh))
    try:
        wait_caught_up(settings)
    finally:
        replay.stop()
    assert replay.error is None
    assert (replay.sink.rows_inserted, replay.sink.dead_letters) == (11, 1)
    [raw] = wh.query("SELECT count() AS n FROM {db:Identifier}.priced_events", {"db": settings.database})
    assert raw["n"] == 11  # the replayed block was dropped as a repeat
    assert _total(wh, settings.database) == (11, Decimal("2.75"))
    [rolled] = wh.query(
        "SELECT sum(cost) AS cost, sum(calls) AS calls FROM {db:Identifier}.rollup_daily", {"db": settings.database}
    )
    assert (rolled["cost"], rolled["calls"]) == (Decimal("2.75"), 11)
