"""processors.fetching: the pieces that run inside faust's consumer, on stand-ins for its objects.

The worker's integration, fault and chaos tests run them for real; these pin the rules."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from types import MethodType, SimpleNamespace
from typing import Any

import faust.transport.consumer as faust_consumer
import pytest
from aiokafka import TopicPartition
from faust.types import TP

from processors import fetching

pytestmark = pytest.mark.unit


def _consumer(
    delivered: list[tuple[str, int]], gaps: list[tuple[Any, int, int]], commit_every: int | None = None
) -> Any:
    async def callback(message: Any) -> None:
        delivered.append((message.topic, message.offset))

    async def add_gap(tp: Any, start: int, end: int) -> None:
        gaps.append((tp, start, end))

    commits: list[int] = []

    async def commit() -> None:
        commits.append(len(delivered))

    return SimpleNamespace(
        callback=callback,
        _read_offset=defaultdict(lambda: None),
        _commit_every=commit_every,
        _n_acked=0,
        _add_gap=add_gap,
        commit=commit,
        commits=commits,
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: topic == "cost-events")),
    )


def _fetched(*offsets: tuple[str, int]) -> Iterator[tuple[Any, Any]]:
    for topic, offset in offsets:
        yield TP(topic, 0), SimpleNamespace(topic=topic, offset=offset)


def test_deliver_hands_over_in_order_and_skips_what_was_read() -> None:
    delivered: list[tuple[str, int]] = []
    gaps: list[tuple[Any, int, int]] = []
    consumer = _consumer(delivered, gaps)
    consumer._read_offset[TP("cost-events", 0)] = 4
    fetched = _fetched(("cost-events", 3), ("cost-events", 5), ("cost-events", 6), ("scope-usage", 0))
    asyncio.run(fetching.deliver(consumer, fetched))
    assert delivered == [("cost-events", 5), ("cost-events", 6), ("scope-usage", 0)]
    assert consumer._read_offset[TP("cost-events", 0)] == 6
    assert consumer._read_offset[TP("scope-usage", 0)] == 0
    assert gaps == []


def test_deliver_records_a_gap_in_an_acked_topic_only() -> None:
    delivered: list[tuple[str, int]] = []
    gaps: list[tuple[Any, int, int]] = []
    consumer = _consumer(delivered, gaps)
    consumer._read_offset[TP("cost-events", 0)] = 2
    consumer._read_offset[TP("scope-usage", 0)] = 2
    asyncio.run(fetching.deliver(consumer, _fetched(("cost-events", 7), ("scope-usage", 9))))
    assert gaps == [(TP("cost-events", 0), 3, 7)]
    assert delivered == [("cost-events", 7), ("scope-usage", 9)]


def test_deliver_commits_every_n_acked_as_faust_does() -> None:
    delivered: list[tuple[str, int]] = []
    consumer = _consumer(delivered, [], commit_every=2)
    consumer._n_acked = 2
    asyncio.run(fetching.deliver(consumer, _fetched(("cost-events", 0), ("cost-events", 1))))
    assert consumer.commits == [0]
    assert consumer._n_acked == 0


def _client(generation: int, assigned: set[TopicPartition], reassigning: bool = False) -> Any:
    paused: list[TopicPartition] = []
    return SimpleNamespace(
        _coordinator=SimpleNamespace(generation=generation),
        _subscription=SimpleNamespace(reassignment_in_progress=reassigning),
        assignment=lambda: assigned,
        pause=lambda *tps: paused.extend(tps),
        paused=paused,
        _fetcher=SimpleNamespace(_records={TopicPartition("w-budgets-changelog", 0): "untaken", "other": "kept"}),
    )


def test_pause_pauses_assigned_changelogs_and_drops_their_untaken_records() -> None:
    changelog = TopicPartition("w-budgets-changelog", 0)
    client = _client(7, {changelog, TopicPartition("cost-events", 0)})
    thread = SimpleNamespace(_ensure_consumer=lambda: client)
    # faust's TP, a different namedtuple than aiokafka's: aiokafka refuses it
    wanted = {TP("w-budgets-changelog", 0), TP("w-budgets-changelog", 1)}
    asyncio.run(fetching._pause_in_consumer_thread(thread, wanted, 7))
    assert client.paused == [changelog]
    assert all(type(tp) is TopicPartition for tp in client.paused)
    assert client._fetcher._records == {"other": "kept"}


@pytest.mark.parametrize(("generation", "reassigning"), [(8, False), (7, True)])
def test_pause_does_nothing_once_a_rebalance_began(generation: int, reassigning: bool) -> None:
    changelog = TopicPartition("w-budgets-changelog", 0)
    client = _client(generation, {changelog}, reassigning)
    thread = SimpleNamespace(_ensure_consumer=lambda: client)
    asyncio.run(fetching._pause_in_consumer_thread(thread, {TP("w-budgets-changelog", 0)}, 7))
    assert client.paused == []
    assert changelog in client._fetcher._records


class _DrainingConsumer:
    """faust's Consumer as its fetch loop sees it: faust's own `getmany`, a flow that stops and
    resumes, and a fetch that runs on the consumer thread: once the records are there the thread
    takes them from aiokafka (its position moves past them) whether or not the loop still waits."""

    consumer_stopped_errors = (RuntimeError,)

    def __init__(self, records: dict[Any, list[Any]]) -> None:
        self.app = SimpleNamespace(
            consumer_generation_id=1,
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, offset: None),
            should_stop=False,
        )
        setattr(self.app, fetching._INSTALLED, True)
        self.transport = SimpleNamespace(app=self.app)
        self.log = SimpleNamespace(dev=lambda *a, **k: None, warning=lambda *a, **k: None)
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self.scheduler = SimpleNamespace(iterate=lambda recs: ((tp, r) for tp, rs in recs.items() for r in rs))
        self._stopped = asyncio.Event()
        self.suspend_flow = asyncio.Event()
        self.can_resume_flow = asyncio.Event()
        self.can_resume_flow.set()
        self.records_back = asyncio.Event()
        self.flow_active = True
        self.should_stop = False
        self._records = records
        self._read_offset: dict[Any, int | None] = defaultdict(lambda: None)
        self._commit_every = None
        self._n_acked = 0
        self._buffered_partitions: set[Any] = set()
        self.delivered: list[int] = []
        self.seeks = 0
        self.seeks_when_taken: int | None = None
        self.getmany = MethodType(faust_consumer.Consumer.getmany, self)

    async def _wait_next_records(self, timeout: float) -> tuple[dict[Any, list[Any]], set[Any]]:
        if not self.flow_active:
            await self.can_resume_flow.wait()
        return await asyncio.shield(asyncio.ensure_future(self._fetch_on_the_consumer_thread()))

    async def _fetch_on_the_consumer_thread(self) -> tuple[dict[Any, list[Any]], set[Any]]:
        await self.records_back.wait()
        records, self._records = self._records, {}
        if records:
            self.seeks_when_taken = self.seeks
        else:
            self._stopped.set()  # the test is over once nothing is left
        return records, {TP("cost-events", 0)}

    def stop_flow(self) -> None:
        self.flow_active = False
        self.can_resume_flow.clear()
        self.suspend_flow.set()

    def resume_flow(self) -> None:
        self.flow_active = True
        self.can_resume_flow.set()
        self.suspend_flow.clear()

    async def perform_seek(self) -> None:
        self.seeks += 1

    async def callback(self, message: Any) -> None:
        self.delivered.append(message.offset)

    def _to_message(self, tp: Any, record: Any) -> Any:
        return SimpleNamespace(topic=tp.topic, offset=record)

    def highwater(self, tp: Any) -> int:
        return 100

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_first(self, *coros: Any) -> None:
        tasks = [asyncio.ensure_future(c) for c in coros]
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()


def test_a_fetch_under_way_when_the_flow_stops_is_read_again_not_lost() -> None:
    """A recovery ends: the flow stops, the partitions are sought back to their committed offsets,
    the flow resumes. A fetch already on the consumer thread brings its records after that seek:
    they must be delivered, or sought back to once more. Cancelled with the flow, the fetch left
    aiokafka's position past records nobody delivered (a partition of the two-worker test stood
    still for good)."""

    async def scenario() -> _DrainingConsumer:
        consumer = _DrainingConsumer({TP("cost-events", 0): [50, 51, 52]})
        drain = asyncio.ensure_future(
            fetching._drain_messages_by_fetch(consumer, SimpleNamespace(_stopped=asyncio.Event()))
        )
        await asyncio.sleep(0.01)  # the fetch is out
        consumer.stop_flow()
        await consumer.perform_seek()  # the recovery's seek to the committed offsets
        consumer.records_back.set()
        await asyncio.sleep(0.01)
        consumer.resume_flow()
        async with asyncio.timeout(5):
            await drain
        return consumer

    consumer = asyncio.run(scenario())
    assert consumer.seeks_when_taken == 1
    assert consumer.delivered == [50, 51, 52] or consumer.seeks > consumer.seeks_when_taken
