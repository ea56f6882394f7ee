"""The intake that hands cost-events from a fetch to the ledger agent (processors/intake.py).
Its effect under faults (rebalances, kill -9) is tested in test_faults.py and tests/chaos."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

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
