"""The intake that hands cost-events from a fetch to the ledger agent (processors/intake.py).
Its effect under faults (rebalances, kill -9) is tested in test_faults.py and tests/chaos."""

from __future__ import annotations

import asyncio
import types
import uuid
from typing import Any

import faust
import pytest
from faust.types import TP

import processors.intake
from processors.fetching import LeanMonitor
from processors.intake import Intake

pytestmark = pytest.mark.unit


async def _next(batches: Any, timeout: float = 1.0) -> list[Any]:
    async with asyncio.timeout(timeout):
        batch: list[Any] = await anext(batches)
        return batch


def test_a_lone_message_goes_at_once_and_a_busy_stream_fills_its_batches() -> None:
    async def scenario() -> tuple[list[Any], list[Any], float, list[Any]]:
        intake = Intake("t", maxsize=100)
        batches = intake.batches(max_events=50, busy_from=3, busy_batch=5, busy_linger_s=0.2)
        await intake.put("lone")
        first = await _next(batches)
        for i in range(5):
            await intake.put(i)
        second = await _next(batches)  # the agent was idle: all that is there
        for i in range(5, 8):
            await intake.put(i)
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def two_more() -> None:
            await asyncio.sleep(0.05)
            await intake.put(8)
            await intake.put(9)

        # busy now: the batch waits for 5 messages, or 0.2 s; the last 2 come after 0.05 s
        more = asyncio.create_task(two_more())
        third = await _next(batches)
        await more
        return first, second, loop.time() - started, third

    first, second, waited, third = asyncio.run(scenario())
    assert first == ["lone"]
    assert second == [0, 1, 2, 3, 4]
    assert third == [5, 6, 7, 8, 9]
    assert 0.04 < waited < 0.19


def test_a_busy_batch_goes_after_the_linger_with_what_came() -> None:
    async def scenario() -> list[list[Any]]:
        intake = Intake("t", maxsize=100)
        batches = intake.batches(max_events=50, busy_from=2, busy_batch=10, busy_linger_s=0.05)
        for i in range(3):
            await intake.put(i)
        out = [await _next(batches)]
        await intake.put(3)
        out.append(await _next(batches))  # busy: only one came within the linger
        await intake.put(4)
        out.append(await _next(batches))  # the last batch was small: a lone message goes at once
        return out

    assert asyncio.run(scenario()) == [[0, 1, 2], [3], [4]]


def test_batches_never_exceed_max_events_and_put_waits_for_room() -> None:
    async def scenario() -> tuple[list[int], bool]:
        intake = Intake("t", maxsize=4)
        batches = intake.batches(max_events=3, busy_from=100, busy_batch=100, busy_linger_s=0.01)
        for i in range(4):
            await intake.put(i)
        blocked = asyncio.create_task(intake.put(4))
        await asyncio.sleep(0.02)
        was_blocked = not blocked.done()
        sizes = [len(await _next(batches))]
        await asyncio.wait_for(blocked, 1)
        sizes.append(len(await _next(batches)))
        return sizes, was_blocked

    sizes, was_blocked = asyncio.run(scenario())
    assert was_blocked, "a full intake must hold the fetch back"
    assert sizes == [3, 2]


def test_clear_drops_what_is_queued() -> None:
    async def scenario() -> list[Any]:
        intake = Intake("t", maxsize=10)
        batches = intake.batches(max_events=10, busy_from=100, busy_batch=100, busy_linger_s=0.01)
        for i in range(3):
            await intake.put(i)
        intake.clear()  # a rebalance: read again from the committed offsets
        assert len(intake) == 0
        await intake.put("after")
        return await _next(batches)

    assert asyncio.run(scenario()) == ["after"]


def test_on_quiet_is_called_once_per_quiet_spell_after_a_batch() -> None:
    async def scenario() -> list[Any]:
        seen: list[Any] = []
        intake = Intake("t", maxsize=10)
        batches = intake.batches(
            max_events=10, busy_from=100, busy_batch=100, busy_linger_s=0.01, quiet_s=0.05,
            on_quiet=lambda: seen.append("quiet"),
        )  # fmt: skip
        waiting = asyncio.create_task(_next(batches))
        await asyncio.sleep(0.2)  # nothing came yet: no batch, so nothing to call quiet
        seen.append("before")
        await intake.put(1)
        seen.append(await waiting)
        waiting = asyncio.create_task(_next(batches))
        await asyncio.sleep(0.03)  # not quiet long enough yet
        seen.append("soon")
        await intake.put(2)  # arrives within quiet_s: the spell starts again after this batch
        seen.append(await waiting)
        waiting = asyncio.create_task(_next(batches))
        await asyncio.sleep(0.3)  # one call however long the spell lasts
        await intake.put(3)
        seen.append(await waiting)
        return seen

    assert asyncio.run(scenario()) == ["before", [1], "soon", [2], "quiet", [3]]


def _consumer_with_messages(topic: str, offsets: list[tuple[int, int]]) -> tuple[Any, list[Any]]:
    """A faust app's own (unstarted) consumer, with an agent on `topic` so its acks count, and
    messages made by that consumer at (partition, offset)."""
    app = faust.App(f"intake-{uuid.uuid4().hex[:6]}", broker="kafka://127.0.0.1:1", Monitor=LeanMonitor)
    app.transport.loop = asyncio.get_running_loop()  # else it makes one of its own, never closed
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")

    async def agent(stream: Any) -> None:
        async for _ in stream:
            pass

    app.agent(source)(agent)
    app.topics._acking_topics.add(topic)  # what subscribing the agent's topic does: its acks count
    consumer = app.consumer
    consumer._committed_offset[TP(topic, 1)] = 10  # partition 1 committed up to offset 10
    messages = [
        consumer._to_message(
            TP(topic, p),
            types.SimpleNamespace(
                topic=topic,
                partition=p,
                offset=o,
                timestamp=0,
                timestamp_type=0,
                headers=[],
                key=b"k",
                value=b"v",
                checksum=None,
                serialized_key_size=1,
                serialized_value_size=1,
            ),
        )
        for p, o in offsets
    ]
    return consumer, messages


def _ack_state(consumer: Any, messages: list[Any]) -> tuple[Any, ...]:
    return (
        [m.acked for m in messages],
        {tp: list(v) for tp, v in consumer._acked.items()},
        {tp: set(v) for tp, v in consumer._acked_index.items()},
        consumer._n_acked,
        sorted((m.tp.partition, m.offset) for m in consumer._unacked_messages),
    )


def test_a_batch_ack_leaves_the_consumer_as_faust_acking_each_message_does() -> None:
    # partition 0 from the start, a repeat of offset 3, partition 1 below and above its commit
    offsets = [(0, 1), (0, 2), (0, 3), (1, 4), (1, 12), (0, 3), (1, 13), (0, 5)]

    async def scenario() -> tuple[Any, Any]:
        states = []
        for batched in (False, True):
            consumer, messages = _consumer_with_messages("costs", offsets)
            if batched:
                processors.intake.track(consumer, messages)
            else:
                for m in messages:
                    consumer.track_message(m)
            tracked = len(consumer._unacked_messages)
            consumer._waiting_for_ack = waiting = asyncio.get_running_loop().create_future()  # a revocation's wait
            if batched:
                processors.intake.ack(consumer, messages[:5])
                processors.intake.ack(consumer, messages)  # again, and the rest: each message counts once
            else:
                for m in messages[:5] + messages:
                    consumer.ack(m)
            states.append((tracked, waiting.done(), _ack_state(consumer, messages)))
            consumer._thread.thread_loop.close()  # the consumer thread's loop, never started
        return states[0], states[1]

    by_faust, batched = asyncio.run(scenario())
    assert batched == by_faust
    tracked, woken, (acked, _, index, n_acked, unacked) = batched
    assert tracked == len(offsets) and woken and all(acked)
    # offset 4 is below partition 1's commit and the second offset 3 a repeat: neither counts, both stay
    assert n_acked == 6 and unacked == [(0, 3), (1, 4)]
    assert index == {TP("costs", 0): {1, 2, 3, 5}, TP("costs", 1): {12, 13}}


def test_track_calls_the_sensors_only_when_one_looks_at_messages() -> None:
    delegated: list[int] = []  # what reached faust's sensor delegate
    seen: list[int] = []  # what reached a sensor that looks

    class Counting(LeanMonitor):
        def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
            seen.append(offset)

    async def scenario() -> None:
        consumer, messages = _consumer_with_messages("costs", [(0, 1), (0, 2)])
        to_sensors = consumer._on_message_in

        def delegate(tp: Any, offset: int, message: Any) -> None:
            delegated.append(offset)
            to_sensors(tp, offset, message)

        consumer._on_message_in = delegate
        processors.intake.track(consumer, messages)  # the LeanMonitor alone: nothing to call
        assert delegated == []
        consumer.app.sensors.add(Counting())
        processors.intake.track(consumer, messages)
        consumer._thread.thread_loop.close()

    asyncio.run(scenario())
    assert delegated == [1, 2] and seen == [1, 2]
