"""processors.fetching: the pieces that run inside faust's consumer, on stand-ins for its objects.

The worker's integration, fault and chaos tests run them for real; these pin the rules."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

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


async def _fetched(*offsets: tuple[str, int]) -> AsyncIterator[tuple[Any, Any]]:
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
