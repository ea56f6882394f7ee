"""What faust 0.15.3's consume path costs, and the fixes (signal latency, throughput).

1. What faust leaves aiokafka fetching (signal latency).

faust reads its tables' changelogs with the stream consumer: every assigned changelog partition
is fetched by aiokafka (one fetch request per broker, for all assigned partitions). After a
recovery faust stops *taking* the changelog partitions of its own (active) tables, which only
this worker writes, but aiokafka goes on *fetching* them: at the first commit after a recovery
each one returns the records just committed, nobody takes them, and aiokafka sends no new fetch
to that broker until they are taken or 100 ms (its `prefetch_backoff`) have passed. Every event
arriving meanwhile waited: the pair of 50-100 ms samples about 4 s into every
bench.signal_latency run (the first commit), traced to fetch requests stopping for 100 ms
right after the commit's changelog records came back untaken.

Fix: once a recovery has completed, pause the active changelog partitions in aiokafka itself
(faust's own pause only stops taking them). Standby changelog partitions (another worker's
tables, copied here) stay fetched: faust reads those continuously. A rebalance makes a new
aiokafka assignment with nothing paused, so the next recovery reads the changelogs as before.

2. Four asyncio tasks per message (throughput). faust's `Consumer._drain_messages` hands each
fetched message to the conductor through `Service.wait_first(callback(message),
suspend_flow.wait())`, which wraps the callback, the flow's event and the service's stopped and
crashed events in a task each, waits, and cancels the three losers: per message. Here one such
wait covers all the messages of one `getmany` (up to `broker_max_poll_records`), handed over one
after another in a single task; the checks faust makes per message stay per message (read offset,
gaps, flow and generation in `getmany`). When the flow is suspended (a rebalance) the task is
cancelled where it is, as faust cancels the one message's callback; the rest of that fetch is
not delivered, as `getmany` stops yielding once the flow is off. Faster delivery exposed two
waits that had been rare: 3. `getmany` waiting 1 s (`GETMANY_TIMEOUT_S`) and 4. an empty fetch held
at the broker for 1.5 s (`FETCH_MAX_WAIT_MS`). bench.faust_ceiling, parse-only handler, same run:
96 -> 34 us of worker CPU per event.

5. faust's Monitor sensor runs four bookkeeping calls per message (in, stream in, stream out, out:
counters, dicts keyed by topic and stream, timestamps on the message) for faust's web pages,
which the worker does not serve (its metrics are its own, per batch). `LeanMonitor` keeps the
Monitor's other hooks (commits, sends, end offsets) and drops the four.

6. cost-events skip the conductor and the Stream altogether: `direct` hands them to an intake
(processors.intake) that the ledger agent takes its batches from.

7. A fetch must not be cancelled. The first version of 2. waited on the flow around the whole of
`getmany`, the fetch included. A fetch runs on faust's consumer thread: cancelled on the event
loop's side (the flow stopping at a rebalance, or at the end of a recovery, see processors.eos 7),
the thread still takes the records from aiokafka, which moves the partition's position past
them, and nobody delivers them. When that fetch came after the recovery's seek to the committed
offsets, the partition was not read again: in the two-worker test under load, a partition stood
with aiokafka's position at 200, faust's read and committed offsets at 50 and nothing acked, for
good (`kill -USR1` on the worker showed it). Now the fetch always completes; records it brings
while the flow is stopped are dropped and every partition is sought back to its committed offset,
as faust's `getmany` does; only the delivery is cancelled when the flow stops, and a stopped flow
is always followed by a seek (faust's recovery, or `eos` 7).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import faust.transport.consumer as faust_consumer
import faust.transport.drivers.aiokafka as faust_aiokafka
from aiokafka import TopicPartition
from faust.sensors.base import Sensor
from faust.sensors.monitor import Monitor
from faust.tables.recovery import Recovery

log = logging.getLogger(__name__)

_INSTALLED = "_agentledger_pause_own_changelogs"


async def _pause_in_consumer_thread(thread: Any, tps: set[Any], generation_id: int) -> None:
    """Runs on faust's consumer thread, where aiokafka lives."""
    client = thread._ensure_consumer()
    if client._coordinator.generation != generation_id or client._subscription.reassignment_in_progress:
        return  # a rebalance came first: its recovery must read these partitions
    assigned = client.assignment()
    mine = [TopicPartition(tp.topic, tp.partition) for tp in tps]
    mine = [tp for tp in mine if tp in assigned]
    if not mine:
        return
    client.pause(*mine)
    for tp in mine:
        # records fetched before the pause would hold the broker's next fetch for 100 ms once more;
        # the position has not moved past them, so a resumed partition fetches them again
        client._fetcher._records.pop(tp, None)


async def pause_own_changelogs(recovery: Any, generation_id: int) -> list[Any]:
    """Pause, in aiokafka, the changelog partitions of this worker's active tables; returns them."""
    app = recovery.app
    if app.consumer_generation_id != generation_id:
        return []
    consumer = app.consumer
    tps = {tp for tp in consumer.assignment() if recovery._is_changelog_tp(tp)} - set(recovery.standby_tps)
    if tps:
        await consumer._thread.call_thread(_pause_in_consumer_thread, consumer._thread, tps, generation_id)
    return sorted(tps)


_on_recovery_completed = Recovery.on_recovery_completed


async def _on_recovery_completed_then_pause(self: Any, generation_id: int = 0) -> None:
    await _on_recovery_completed(self, generation_id)
    if getattr(self.app, _INSTALLED, False):
        paused = await pause_own_changelogs(self, generation_id)
        log.debug("paused fetching of own changelog partitions %s", paused)


Recovery.on_recovery_completed = _on_recovery_completed_then_pause  # type: ignore[method-assign]


# faust yields to the loop every 100 messages while it delivers a fetch: so does this
YIELD_EVERY = 100
# How long one `getmany` waits for records. faust waits 1 s, with the set of partitions it asked
# for fixed at the call; a partition whose stream buffer was full when it asked (faust leaves it
# out until the agent has taken half of it) is not read again before that second is over, though
# the buffer empties in a few ms. Delivered faster (one wait per fetch), the buffer filled up
# often, and the worker stood idle for up to 1 s each time (bench.pipeline).
GETMANY_TIMEOUT_S = 0.05


_INTAKES = "_agentledger_intakes"


def direct(app: Any, intake: Any) -> None:
    """Hand the messages of `intake.topic` to `intake` (processors.intake) instead of faust's
    conductor. Call it before the worker starts."""
    intakes: dict[str, Any] = getattr(app, _INTAKES, None) or {}
    intakes[intake.topic] = intake
    setattr(app, _INTAKES, intakes)


def fetched(consumer: Any, records: Any, active_partitions: Any, generation_id: int) -> Iterator[tuple[Any, Any]]:
    """The messages of one fetch as faust's `Consumer.getmany` yields them: partitions in turn (its
    scheduler), none once the flow stops or the generation changes, none of a partition no longer
    active; each partition's end offset given to the monitor (once per fetch: faust asked aiokafka
    for it at every message, four Python calls for the same number)."""
    app = consumer.app
    to_message = consumer._to_message
    buffered = consumer._buffered_partitions
    track_end_offset = app.monitor.track_tp_end_offset
    highwater = consumer.highwater
    tracked: set[Any] = set()
    for tp, record in consumer.scheduler.iterate(records):
        if not consumer.flow_active or app.consumer_generation_id != generation_id:
            return
        if active_partitions is None or tp in active_partitions or tp in buffered:
            if tp not in tracked:
                tracked.add(tp)
                track_end_offset(tp, highwater(tp))
            yield tp, to_message(tp, record)


async def deliver(consumer: Any, messages: Iterable[tuple[Any, Any]]) -> None:
    """Hand each message of one fetch to the conductor, or to the intake of its topic (`direct`),
    with faust's per-message checks."""
    callback = consumer.callback
    intakes: dict[str, Any] = getattr(consumer.app, _INTAKES, None) or {}
    read_offset = consumer._read_offset
    commit_every = consumer._commit_every
    acks_enabled_for = consumer.app.topics.acks_enabled_for
    since_yield = 0
    for tp, message in messages:
        since_yield += 1
        if since_yield > YIELD_EVERY:
            await asyncio.sleep(0)
            since_yield = 0
        offset = message.offset
        last = read_offset[tp]
        if last is not None and offset < last:
            continue  # already delivered (faust logs it as dropped)
        if last and offset - last > 1 and acks_enabled_for(message.topic):
            await consumer._add_gap(tp, last + 1, offset)
        if commit_every is not None and consumer._n_acked >= commit_every:
            consumer._n_acked = 0
            await consumer.commit()
        intake = intakes.get(message.topic) if intakes else None
        if intake is None:
            await callback(message)
        elif not intake.offer(message):
            await intake.put(message)  # full: wait for room, as faust waits on a full stream buffer
        read_offset[tp] = offset


_drain_messages = faust_consumer.Consumer._drain_messages


async def _seek_back(consumer: Any) -> None:
    """What faust's `getmany` does with records fetched while the flow was stopped: drop them and
    seek every partition back to its committed offset, to read them again."""
    try:
        await consumer.perform_seek()
    except Exception as exc:
        log.warning("could not seek back to the committed offsets after a fetch with the flow stopped: %r", exc)


async def _drain_messages_by_fetch(self: Any, fetcher: Any) -> None:
    """faust's loop over `getmany`, with one `wait_first` per fetch instead of one per message."""
    if not getattr(self.app, _INSTALLED, False):
        return await _drain_messages(self, fetcher)  # type: ignore[no-any-return]
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            self.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
            # The fetch is never cancelled: aiokafka moves a partition's position past the records it
            # hands over, so records taken from it and then dropped are not fetched again until the
            # next seek (see 7. above). Only their delivery stops when the flow does.
            records, active_partitions = await self._wait_next_records(GETMANY_TIMEOUT_S)
            generation_id = self.app.consumer_generation_id
            await self.sleep(0)  # as faust: getmany may return at once, again and again
            if records and not self.should_stop:
                if self.flow_active:
                    messages = fetched(self, records, active_partitions, generation_id)
                    await self.wait_first(deliver(self, messages), self.suspend_flow.wait())
                else:
                    await _seek_back(self)
            self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
    return None


faust_consumer.Consumer._drain_messages = _drain_messages_by_fetch  # type: ignore[method-assign]

# faust has aiokafka hold an empty fetch at the broker for up to 1.5 s. While one is out, aiokafka
# sends no other fetch to that broker, and a partition whose records faust had not yet taken when
# it was sent is not in it: that partition waited for the 1.5 s to pass (bench.pipeline: the worker
# idle 0.5-1.2 s at a time). An empty fetch every 50 ms is nothing for a broker.
FETCH_MAX_WAIT_MS = 50

_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer_short_polls(self: Any, transport: Any) -> Any:
    consumer = _create_worker_consumer(self, transport)
    if getattr(self.app, _INSTALLED, False):
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
    return consumer


faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer_short_polls  # type: ignore[method-assign]


def install(app: Any) -> None:
    """Pause the app's own changelog partitions in aiokafka after every recovery, and deliver
    fetched messages with one wait per fetch."""
    setattr(app, _INSTALLED, True)


class LeanMonitor(Monitor):
    """faust's Monitor without its per-message hooks (see 5. above); `faust.App(Monitor=...)`."""

    # the base Sensor's no-op itself: `intake.track` skips the sensors when each one's is that
    on_message_in = Sensor.on_message_in

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> dict[str, Any] | None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None
