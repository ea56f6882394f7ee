"""cost-events straight from a fetch to the ledger agent, past faust's conductor and Stream.

faust hands each message through its conductor (a lock, the topic's channels, the decoding of key
and value, an Event, a queue) and then a Stream (an iterator step, the current event, processors,
an ack counted down through the message's reference count). The ledger agent uses none of it: it
takes raw values in batches and acks every message of a batch once the batch's records are
delivered. That path cost about a quarter of the worker's CPU per event (bench.pipeline --profile).

`Intake` is a bounded queue of one topic's messages that `processors.fetching.deliver` fills
instead of calling the conductor. faust still subscribes to the topic for the agent, assigns its
partitions and keeps every per-message check in `deliver` (read offsets, gaps, flow,
generation); what changes is who hands the message over:

- Rebalances: faust suspends the flow (the fetch being delivered is cancelled), then clears the
  queues it manages, this one included (`flow_control.manage_queue`), and seeks back to the
  committed offsets after the assignment. A batch already taken is tracked as unacked, so faust's
  wait for unacked messages at a revocation waits for its delivery, as it does for a Stream's.
- Back-pressure: `put` waits while `maxsize` messages are queued, which stops the delivery of the
  fetch, as a full stream buffer does.
- Acks: `consumer.ack(message)` itself, what a Stream's ack ends in when a message's last
  reference is gone (nothing else holds one here).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from faust.sensors.base import Sensor
from faust.types.tuples import ack_lock
from mode.utils.futures import notify


class Intake:
    """One topic's messages, from `fetching.deliver` to one agent, in batches."""

    def __init__(self, topic: str, maxsize: int) -> None:
        self.topic = topic
        self.maxsize = maxsize
        self._messages: deque[Any] = deque()
        self._want = 1
        """How many queued messages wake the agent: 1, or a busy stream's batch size."""
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._messages)

    def offer(self, message: Any) -> bool:
        """Queue a message if there is room; False (nothing queued) when `maxsize` are queued.
        `put` without a coroutine per message, for the delivery of a fetch."""
        messages = self._messages
        if len(messages) >= self.maxsize:
            return False
        messages.append(message)
        if len(messages) >= self._want:
            self._ready.set()
        return True

    async def put(self, message: Any) -> None:
        while not self.offer(message):
            self._room.clear()
            await self._room.wait()

    def clear(self) -> None:
        """Drop what is queued (faust's flow control, at a rebalance): read again from the
        committed offsets after the assignment."""
        self._messages.clear()
        self._ready.clear()
        self._room.set()

    async def batches(
        self,
        max_events: int,
        busy_from: int,
        busy_batch: int,
        busy_linger_s: float,
        quiet_s: float = 0.0,
        on_quiet: Callable[[], None] | None = None,
    ) -> AsyncIterator[list[Any]]:
        """Batches of what has arrived: at once when the agent is idle (a lone event never waits);
        after a batch of `busy_from` or more, until `busy_batch` have arrived or `busy_linger_s`
        passed, so per-batch costs (sends, a delivery round trip, a changelog record per key)
        are shared by more events. `on_quiet` is called once each time nothing has arrived for
        `quiet_s` after a batch."""
        busy = False
        since_quiet = False  # a batch went out since `on_quiet` was last called
        while True:
            self._want = min(busy_batch, max_events) if busy else 1
            if len(self._messages) < self._want:
                self._ready.clear()
                if busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._ready.wait(), busy_linger_s)
                    if not self._messages:
                        busy = False
                        continue
                elif since_quiet and on_quiet is not None:
                    try:
                        await asyncio.wait_for(self._ready.wait(), quiet_s)
                    except TimeoutError:
                        since_quiet = False
                        on_quiet()
                        continue
                else:
                    await self._ready.wait()
            take = min(len(self._messages), max_events)
            popleft = self._messages.popleft
            batch = [popleft() for _ in range(take)]
            self._room.set()
            busy = take >= busy_from
            since_quiet = True
            yield batch


def track(consumer: Any, messages: Sequence[Any]) -> None:
    """Mark a batch's messages unacked, so a revocation waits for their delivery: faust's
    `Consumer.track_message` for each, its sensors called only when one of them looks at
    messages (faust's Monitor does; the worker's `fetching.LeanMonitor` does not)."""
    add = consumer._unacked_messages.add
    for message in messages:
        add(message)
    sensors = consumer.app.sensors
    if any(type(sensor).on_message_in is not Sensor.on_message_in for sensor in sensors):
        on_message_in = consumer._on_message_in
        for message in messages:
            on_message_in(message.tp, message.offset, message)


def ack(consumer: Any, messages: Sequence[Any]) -> None:
    """faust's `Consumer.ack` for each message of a batch, under its lock once: the same
    bookkeeping (the message's `acked`, the partition's acked offsets and index, the count
    towards `broker_commit_every`, the unacked set), one wake-up of a wait for acks."""
    acks_enabled = consumer.app.topics.acks_enabled_for
    enabled: dict[str, bool] = {}
    discard = consumer._unacked_messages.discard
    committed_offset = consumer._committed_offset
    acked_index = consumer._acked_index
    acked = consumer._acked
    newly = 0
    with ack_lock:
        try:
            for message in messages:
                if message.acked:
                    continue
                message.acked = True
                topic = message.topic
                on = enabled.get(topic)
                if on is None:
                    on = enabled[topic] = acks_enabled(topic)
                if not on:
                    continue
                tp, offset = message.tp, message.offset
                committed = committed_offset[tp]
                if committed is None or offset >= committed:
                    index = acked_index[tp]
                    if offset not in index:
                        discard(message)
                        index.add(offset)
                        acked[tp].append(offset)
                        newly += 1
        finally:
            consumer._n_acked += newly
            if any(enabled.values()):
                notify(consumer._waiting_for_ack)
