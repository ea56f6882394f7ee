"""The exactly-once patches' own logic, without Kafka (their effect is tested in test_faults.py)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
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


# -- pipelined batches: a batch's delivery overlaps the next batch's preparation


async def _batches_of(*batches: list[str]) -> Any:
    for batch in batches:
        yield batch
        await asyncio.sleep(0)


def test_the_next_batch_is_prepared_while_the_previous_one_is_delivered_and_acks_wait_for_delivery() -> None:
    async def scenario() -> list[str]:
        order: list[str] = []
        delivered = {"b1": asyncio.get_running_loop().create_future(), "b2": asyncio.get_running_loop().create_future()}

        async def prepare(batch: list[str]) -> list[Any]:
            name = batch[0][:2]
            order.append(f"prepare {name}")
            if name == "b2":
                assert not delivered["b1"].done(), "b2 must be prepared while b1 is still on its way"
                delivered["b1"].set_result(None)
            else:
                asyncio.get_running_loop().call_later(0.05, delivered["b2"].set_result, None)
            return [delivered[name]]

        async def ack(events: Sequence[str]) -> None:
            order.extend(f"ack {event}" for event in events)

        batches = _batches_of(["b1-e1", "b1-e2"], ["b2-e1"])
        async with asyncio.timeout(5):  # one at a time, b1's delivery would wait for b2 for ever
            await eos.pipeline_batches(batches, prepare, ack, eos.CommitGate(), _never)
        return order

    assert asyncio.run(scenario()) == ["prepare b1", "prepare b2", "ack b1-e1", "ack b1-e2", "ack b2-e1"]


def test_a_commit_waits_until_the_batch_in_delivery_is_acked() -> None:
    async def scenario() -> list[str]:
        gate = eos.CommitGate()
        order: list[str] = []
        loop = asyncio.get_running_loop()
        in_flight = loop.create_future()

        async def prepare(batch: list[str]) -> list[Any]:
            order.append("prepared")
            loop.call_later(0.05, in_flight.set_result, None)
            return [in_flight]

        async def ack(events: Sequence[str]) -> None:
            order.extend(f"ack {event}" for event in events)

        async def commit() -> None:
            await asyncio.sleep(0.01)  # the batch is prepared and on its way
            async with gate.commit():
                order.append("commit")

        await asyncio.gather(eos.pipeline_batches(_batches_of(["e1"]), prepare, ack, gate, _never), commit())
        return order

    assert asyncio.run(scenario()) == ["prepared", "ack e1", "commit"]


def test_a_failed_delivery_is_reported_releases_the_gate_and_acks_nothing() -> None:
    async def scenario() -> tuple[list[str], int]:
        gate = eos.CommitGate()
        acked: list[str] = []
        failures = 0
        loop = asyncio.get_running_loop()

        async def prepare(batch: list[str]) -> list[Any]:
            lost = loop.create_future()
            lost.set_exception(RuntimeError("broker said no"))
            return [lost]

        async def ack(events: Sequence[str]) -> None:
            acked.extend(events)

        def failed() -> None:
            nonlocal failures
            failures += 1

        with pytest.raises(RuntimeError, match="broker said no"):
            await eos.pipeline_batches(_batches_of(["e1"]), prepare, ack, gate, failed)
        async with asyncio.timeout(1), gate.commit():
            pass
        return acked, failures

    assert asyncio.run(scenario()) == ([], 1)


def _never() -> None:
    raise AssertionError("no batch should fail here")
