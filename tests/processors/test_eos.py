"""The exactly-once patches' own logic, without Kafka (their effect is tested in test_faults.py)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP as TopicPartition
from intervaltree import IntervalTree

from processors import eos

pytestmark = pytest.mark.unit


def test_commit_waits_for_batches_in_flight_and_new_batches_wait_for_the_commit() -> None:
    async def scenario() -> list[str]:
        gate = eos.CommitGate()
        order: list[str] = []
        first_in = asyncio.Event()
        release_first = asyncio.Event()

        async def batch(name: str, hold: asyncio.Event | None = None) -> None:
            async with gate.batch():
                order.append(f"{name} start")
                if hold is not None:
                    first_in.set()
                    await hold.wait()
                await asyncio.sleep(0)
                order.append(f"{name} end")

        async def commit() -> None:
            async with gate.commit():
                order.append("commit start")
                await asyncio.sleep(0.01)
                order.append("commit end")

        first = asyncio.create_task(batch("b1", release_first))
        await first_in.wait()
        committing = asyncio.create_task(commit())
        await asyncio.sleep(0.01)  # the commit is now waiting for b1
        second = asyncio.create_task(batch("b2"))
        await asyncio.sleep(0.01)
        assert order == ["b1 start"], "neither the commit nor a new batch may start while b1 runs"
        release_first.set()
        await asyncio.gather(first, committing, second)
        return order

    assert asyncio.run(scenario()) == ["b1 start", "b1 end", "commit start", "commit end", "b2 start", "b2 end"]


def test_batches_run_alongside_each_other() -> None:
    async def scenario() -> int:
        gate = eos.CommitGate()
        inside = 0
        most = 0

        async def batch() -> None:
            nonlocal inside, most
            async with gate.batch():
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.01)
                inside -= 1

        await asyncio.gather(batch(), batch(), batch())
        return most

    assert asyncio.run(scenario()) == 3


def test_a_failed_batch_releases_the_gate_without_acking() -> None:
    async def scenario() -> tuple[list[Any], bool]:
        app = SimpleNamespace()
        eos_gate = eos.CommitGate()
        setattr(app, eos._GATE, eos_gate)
        acked: list[Any] = []
        stream = SimpleNamespace(ack=lambda e: _async_append(acked, e))
        with pytest.raises(RuntimeError):
            async with eos.batch(app, stream, ["e1", "e2"]):
                raise RuntimeError("pricing bug")
        committed = False
        async with asyncio.timeout(1):
            async with eos_gate.commit():
                committed = True
        return acked, committed

    acked, committed = asyncio.run(scenario())
    assert acked == []
    assert committed


def test_a_batch_is_acked_inside_the_gate() -> None:
    async def scenario() -> list[Any]:
        app = SimpleNamespace()
        setattr(app, eos._GATE, eos.CommitGate())
        acked: list[Any] = []
        stream = SimpleNamespace(ack=lambda e: _async_append(acked, e))
        async with eos.batch(app, stream, ["e1", "e2"]):
            assert acked == []
        return acked

    assert asyncio.run(scenario()) == ["e1", "e2"]


async def _async_append(out: list[Any], item: Any) -> bool:
    out.append(item)
    return True


TP = TopicPartition("scope-usage", 0)
SOURCE = TopicPartition("cost-events", 0)


def _consumer(acked: list[int], gated: bool = True, tp: Any = TP) -> Any:
    app = SimpleNamespace()
    if gated:
        setattr(app, eos._GATE, eos.CommitGate(contiguous_topics=["cost-events"]))
    return SimpleNamespace(
        app=app,
        _acked=defaultdict(list, {tp: list(acked)}),
        _acked_index=defaultdict(set, {tp: set(acked)}),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None, {tp: 10}),
    )


def test_commit_offset_is_one_past_the_last_acked_despite_transaction_markers() -> None:
    # 10..12 acked, 13 a commit marker (never delivered), 14..20 acked
    consumer = _consumer([10, 11, 12, 14, 15, 16, 17, 18, 19, 20])
    assert eos._offset_after_last_acked(consumer, TP) == 21
    assert consumer._acked[TP] == [] and consumer._acked_index[TP] == set()
    assert eos._offset_after_last_acked(consumer, TP) is None


def test_commit_offset_with_a_gap_at_the_head() -> None:
    # committed 10; 10 and 11 were markers / aborted records: faust alone would never commit again
    consumer = _consumer([12, 13])
    assert eos._offset_after_last_acked(consumer, TP) == 14
    assert eos._new_offset(_consumer([12, 13]), TP) is None  # faust's own answer, for contrast


def test_without_the_gate_faust_decides() -> None:
    consumer = _consumer([10, 11, 13], gated=False)
    assert eos._offset_after_last_acked(consumer, TP) == 12


def test_contiguous_topic_commits_one_past_the_last_acked() -> None:
    assert eos._offset_after_last_acked(_consumer([10, 11, 12], tp=SOURCE), SOURCE) == 13


def test_a_hole_in_a_contiguous_topic_stops_the_commit_there_and_is_read_again() -> None:
    consumer = _consumer([10, 11, 14, 15], tp=SOURCE)  # 12 and 13 never reached the agent
    assert eos._offset_after_last_acked(consumer, SOURCE) == 12
    assert eos.commit_gate(consumer.app).holes == {SOURCE: 12}
    assert consumer._acked[SOURCE] == [14, 15] and consumer._acked_index[SOURCE] == {14, 15}


def test_a_hole_at_the_head_commits_nothing() -> None:
    consumer = _consumer([12, 13], tp=SOURCE)  # committed 10: 10 and 11 never reached the agent
    assert eos._offset_after_last_acked(consumer, SOURCE) is None
    assert eos.commit_gate(consumer.app).holes == {SOURCE: 10}
