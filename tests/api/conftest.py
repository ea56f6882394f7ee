"""Fixtures for the API and sink: priced events, a producer, a chDB warehouse per test."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from agentledger.settings import Settings
from api.warehouse import Warehouse, open_warehouse
from api.warehouse.chdb import ChdbWarehouse
from api.warehouse.clickhouse import ClickHouseWarehouse
from schemas import codec
from schemas.events import CostEvent, EventKind, PricedEvent, derive_event_id
from schemas.topics import PRICED_EVENTS, topic_name
from tests.api.clickhouse_http import ChdbFront, serve_chdb

ROOT = Path(__file__).resolve().parents[2]
BASE_TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def priced_event_factory() -> Callable[..., PricedEvent]:
    """PricedEvent builder; every call is a new step unless `step` is given."""
    counter = itertools.count()

    def make(
        *,
        team: str | None = "payments",
        project: str | None = "checkout",
        cost: str = "0.001234567891",
        list_cost: str | None = None,
        step: int | None = None,
        workflow_id: str = "wf-1",
        model: str = "gpt-4o",
        input_tokens: int = 1000,
        output_tokens: int = 200,
        occurred_at: datetime | None = None,
        **event_fields: Any,
    ) -> PricedEvent:
        n = next(counter) if step is None else step
        event = CostEvent(
            event_id=derive_event_id(workflow_id, n, "llm"),
            kind=EventKind.LLM_CALL,
            occurred_at=occurred_at or BASE_TIME + timedelta(seconds=n),
            session_id=f"sess-{workflow_id}",
            workflow_id=workflow_id,
            step=n,
            step_name="llm",
            agent_type="pr-reviewer",
            team=team,
            project=project,
            provider="openai",
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            **event_fields,
        )
        return PricedEvent(
            event=event,
            cost=Decimal(cost),
            list_cost=Decimal(list_cost if list_cost is not None else cost),
            price_source="genai-prices",
            price_version="2026-03-01",
            priced_at=BASE_TIME + timedelta(hours=1),
        )

    return make


@pytest.fixture
def produce_priced() -> Callable[..., None]:
    """Send PricedEvents (or raw bytes) to the settings' priced-events topic and wait."""

    def produce(settings: Settings, items: Sequence[PricedEvent | bytes], *, partition: int | None = None) -> None:
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
        topic = topic_name(settings.topic_prefix, PRICED_EVENTS)
        for item in items:
            if isinstance(item, PricedEvent):
                value, key = codec.encode(item), item.event.session_id.encode()
            else:
                value, key = item, b"garbage"
            if partition is None:
                producer.produce(topic, value, key=key)
            else:
                producer.produce(topic, value, key=key, partition=partition)
        assert producer.flush(30) == 0

    return produce


def open_served(stack: contextlib.ExitStack, settings: Settings) -> tuple[Settings, Warehouse, ChdbFront]:
    """Serve the settings' chDB folder through the test HTTP front (tests/api/clickhouse_http.py)
    and open the server adapter on it: the settings with `clickhouse_url` pointing at the front,
    the warehouse `open_warehouse` makes of them, and the front. `stack` closes them."""
    url, front = stack.enter_context(serve_chdb(settings.chdb_path))
    served = settings.model_copy(update={"clickhouse_url": url})
    wh = open_warehouse(served)
    assert isinstance(wh, ClickHouseWarehouse)
    stack.callback(wh.close)
    return served, wh, front


TEST_WAREHOUSE = os.environ.get("AGENTLEDGER_TEST_WAREHOUSE", "chdb")
"""`clickhouse` makes `warehouse_factory` hand out the server adapter (through the test HTTP
front) instead of chDB: a sweep of every test written against the embedded adapter."""


@pytest.fixture
def warehouse_factory() -> Iterator[Callable[[Settings], Warehouse]]:
    """A chDB warehouse on the settings' folder, closed at the end of the test (the server
    adapter on that folder when AGENTLEDGER_TEST_WAREHOUSE=clickhouse)."""
    with contextlib.ExitStack() as stack:

        def make(settings: Settings) -> Warehouse:
            if TEST_WAREHOUSE == "clickhouse":
                return open_served(stack, settings)[1]
            wh = ChdbWarehouse(settings.chdb_path)
            stack.callback(wh.close)
            return wh

        yield make


@pytest.fixture
def server_warehouse_factory() -> Iterator[Callable[[Settings], tuple[Settings, Warehouse, ChdbFront]]]:
    """`open_served` for the test: the server adapter on the settings' folder, closed at the end."""
    with contextlib.ExitStack() as stack:
        yield lambda settings: open_served(stack, settings)


@pytest.fixture(params=["chdb", "clickhouse"])
def any_warehouse_factory(
    request: pytest.FixtureRequest, warehouse_factory: Callable[[Settings], Warehouse], server_warehouse_factory: Any
) -> Callable[[Settings], Warehouse]:
    """Each test that uses it runs twice: on the embedded adapter and on the server adapter."""
    if request.param == "chdb":
        return warehouse_factory
    return lambda settings: server_warehouse_factory(settings)[1]


def _high_watermark(consumer: Consumer, tp: TopicPartition) -> int:
    # A partition created a moment ago may not have a leader yet: ask again.
    for _ in range(50):
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)[1]
        except KafkaException:
            time.sleep(0.2)
    return consumer.get_watermark_offsets(tp, timeout=10)[1]


def end_offsets(settings: Settings) -> dict[int, int]:
    topic = topic_name(settings.topic_prefix, PRICED_EVENTS)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.sink_group})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        out = {}
        for p in meta.topics[topic].partitions:
            out[p] = _high_watermark(consumer, TopicPartition(topic, p))
        return out
    finally:
        consumer.close()


def committed_offsets(settings: Settings) -> dict[int, int]:
    topic = topic_name(settings.topic_prefix, PRICED_EVENTS)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.sink_group})
    try:
        parts = [TopicPartition(topic, p) for p in end_offsets(settings)]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


def wait_caught_up(settings: Settings, timeout: float = 60) -> None:
    """Until the sink group has committed every partition's end offset."""
    want = end_offsets(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = committed_offsets(settings)
        if all(got.get(p, -1) >= high for p, high in want.items() if high > 0):
            return
        time.sleep(0.2)
    raise AssertionError(f"sink not caught up: committed {committed_offsets(settings)}, end {want}")


def sink_until_caught_up(settings: Settings, wh: Warehouse) -> Any:
    """Run a Sink until its group has committed every partition's end offset; the Sink (its
    counters), after checking it raised nothing."""
    from api.sink import Sink

    runner = SinkThread(Sink(settings, wh))
    try:
        wait_caught_up(settings)
    finally:
        runner.stop()
    assert runner.error is None, runner.error  # the sink's own failure, not only "not caught up"
    return runner.sink


class CrashBeforeCommit(Exception):
    """The sink killed after its inserts, before it commits the offsets."""


def sink_until_crash_before_commit(settings: Settings, wh: Warehouse) -> Any:
    """Run a Sink that dies at its first commit, after that batch's inserts (a process killed
    between insert and commit); the Sink (its counters), once it has died that way."""
    from api.sink import Sink

    crashing = Sink(settings, wh)

    def crash_instead_of_commit(offsets: Any) -> None:
        raise CrashBeforeCommit("killed after insert, before commit")

    crashing._commit = crash_instead_of_commit
    runner = SinkThread(crashing)
    runner.thread.join(60)
    assert isinstance(runner.error, CrashBeforeCommit), runner.error
    return crashing


class SinkThread:
    """Run a Sink in a thread; `stop()` joins it and re-raises what it raised."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sink.run(self.stop_event)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
