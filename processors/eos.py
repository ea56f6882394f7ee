"""Exactly-once with faust-streaming 0.15.3 (aiokafka 0.14): what it gets wrong, and the fixes.

Under `processing_guarantee="exactly_once"` the worker's truth is what is committed: per
partition, one Kafka transaction holds the outputs, the table changelog writes and the consumed
offsets. After a crash the worker rebuilds its tables from the committed changelog and re-reads
from the committed offsets, which is exact only if every transaction holds whole batches and
their offsets. faust 0.15.3 breaks that in six ways; tests/processors/test_faults.py caught
each of the first four (kill -9 and a second worker joining mid-stream, figures compared with
the ground truth computed from the input):

1. A commit can split a batch. faust commits every `broker_commit_interval` with the offsets
   acked so far, while an agent may be half-way through a batch whose outputs are already in
   the transaction (its sends await the broker); the batch is acked only after it. The
   transaction commits outputs and changelog writes of messages whose offsets it does not
   commit, and after a kill -9 they are processed again (events priced twice in the 50,000-event
   test; a team budget counting an event twice). Fix: `CommitGate` - commits wait for the
   batches in flight, new batches wait for a waiting commit, and the agent acks its batch
   inside the gate once its records are delivered (`pipeline_batches`).
2. A commit stops at the first gap in the acked offsets (`Consumer._new_offset`), counting on
   `_drain_messages` to record the offsets it never delivers; it misses some, and a
   read_committed consumer never delivers transaction markers or aborted records, which fill
   `scope-usage`. Part of a batch's offsets stay uncommitted while its outputs commit (double
   count again), or a partition with a gap at its head never commits again (its events stayed
   invisible). Fix: `_offset_after_last_acked`. In a topic without holes (cost-events) a gap
   means deliveries were skipped (seen after a kill -9 of the other worker, in about 1 of 6
   runs of the two-worker test, from fetches cancelled on their way: processors.fetching 7);
   committing past it would lose events, so the commit stops at the hole and the partition is
   read again from there.
3. A rebalance keeps half of the state. faust keeps the memory tables of the partitions a
   worker keeps and their open transactions, seeks back to the committed offsets, and
   "recovers" those tables only from where its previous recovery stopped
   (`Recovery._build_offsets`): keys written since are reset to committed values, keys written
   only in the open transaction are not. The second pass then counts on top of what it counted
   (scope budgets, which nothing deduplicates) or skips events as repeats whose counting was
   reset (session budgets undercount: every threshold-1 alert and kill missing). faust also
   re-begins those transactions ("Invalid state transition IN_TRANSACTION -> IN_TRANSACTION").
   Fix: `reset_to_committed` makes every rebalance a restart: once faust has revoked (agents
   idle, its commit attempted) it aborts every open transaction, stops every transactional
   producer (faust starts fresh ones, whose registration waits for those transactions to end),
   forgets acked-but-uncommitted offsets and empties the tables and their recovery offsets, so
   every assigned partition is rebuilt from its committed changelog from the start. Cost: a
   full read of the (compacted) changelogs per rebalance.
4. faust creates the changelog topics at start-up, just before its consumer subscribes; the
   group leader's metadata can miss the last one for minutes, and its assignor then gives that
   changelog's partitions to nobody ("Ignoring missing topic"): nobody recovers that table at a
   rebalance (scope budgets lost). Fix: `ensure_changelog_topics`, before the app starts.
5. When faust's own `revoked` set is empty it keeps the producers of partitions it lost; the new
   owner fences them and, if the partition comes back, every send fails. Fixed by 3, and
   `install` drops any producer left for a partition not assigned.
6. Recovery's end offset under exactly-once: see `committed_highwaters`.
7. After a recovery faust lets records flow to the agents while it seeks the stream partitions
   back to their committed offsets: see `_resume_stream_partitions_with_flow_stopped`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import faust.transport.consumer as faust_consumer
import faust.transport.drivers.aiokafka as faust_aiokafka
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from agentledger.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_STATE_UNSAFE = 70
"""Exit status when the state cannot be made consistent; the supervisor restarts the process."""


async def committed_highwaters(self: Any, partitions: list[Any]) -> Any:
    """End offsets as a read_committed consumer sees them (the last stable offset), from the broker.

    faust 0.15.3 takes them, under exactly-once, from `consumer.last_stable_offset(tp)`, which
    aiokafka only knows after it has fetched from that partition. For a changelog partition
    newly assigned by a rebalance it is None, read as "empty" (-1): recovery then restores
    nothing (dedupe and budgets of the moved partitions are lost, events count twice), or, when
    an offset was kept from an earlier generation, crashes with ConsistencyError. aiokafka's
    `end_offsets` sends ListOffsets with the consumer's isolation level, which returns the LSO.
    """
    return await self._ensure_consumer().end_offsets(partitions)


faust_aiokafka.AIOKafkaConsumerThread._highwaters = committed_highwaters  # type: ignore[method-assign]


class CommitGate:
    """Batches run alongside each other, never alongside a commit; a waiting commit goes first."""

    def __init__(self, contiguous_topics: Iterable[str] = ()) -> None:
        self.contiguous_topics = frozenset(contiguous_topics)
        """Topics no transaction writes: their offsets have no holes (see `_offset_after_last_acked`)."""
        self.holes: dict[Any, int] = {}
        """Partition -> first offset faust never delivered, to be read again after the commit."""
        self._cond = asyncio.Condition()
        self._batches = 0
        self._committing = False
        self._commits_waiting = 0

    def describe(self) -> str:
        return (
            f"{self._batches} batches in, {'committing' if self._committing else 'not committing'}, "
            f"{self._commits_waiting} commits waiting, holes {self.holes or 'none'}"
        )

    async def enter_batch(self) -> None:
        """A batch starts; every `enter_batch` is followed by one `leave_batch`, in any task."""
        async with self._cond:
            await self._cond.wait_for(lambda: not self._committing and not self._commits_waiting)
            self._batches += 1

    async def leave_batch(self) -> None:
        async with self._cond:
            self._batches -= 1
            self._cond.notify_all()

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        await self.enter_batch()
        try:
            yield
        finally:
            await self.leave_batch()

    @asynccontextmanager
    async def commit(self) -> AsyncIterator[None]:
        async with self._cond:
            self._commits_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._batches and not self._committing)
            finally:
                self._commits_waiting -= 1
            self._committing = True
        try:
            yield
        finally:
            async with self._cond:
                self._committing = False
                self._cond.notify_all()


_GATE = "_agentledger_commit_gate"


def commit_gate(app: Any) -> CommitGate:
    """The app's gate (installed by `install`)."""
    gate: CommitGate = getattr(app, _GATE)
    return gate


async def pipeline_batches(
    batches: AsyncIterator[Sequence[T]],
    prepare: Callable[[Sequence[T]], Awaitable[list[Any]]],
    ack: Callable[[Sequence[T]], Awaitable[Any]],
    gate: CommitGate | None,
    failed: Callable[[], None],
) -> None:
    """Process batches one after another, each one's delivery overlapping the next one's work.

    `prepare` does a batch's work (state updated in memory, its records handed to the producer) and
    returns the records' delivery futures; those are awaited in a task of their own while the next
    batch is prepared. At most two batches are out at once: the next waits for the one before it
    to be delivered. A batch holds the commit gate from before its preparation until it is
    delivered and its events acked, so a commit never holds part of it; its events are acked only
    once delivered. A failure to prepare or deliver calls `failed` (which may exit the process),
    then raises.
    """
    delivering: asyncio.Task[None] | None = None
    async for events in batches:
        if gate is not None:
            await gate.enter_batch()
        try:
            futures = await prepare(events)
        except Exception:
            if gate is not None:
                await gate.leave_batch()
            failed()
            raise
        if delivering is not None:
            await delivering
        delivering = asyncio.create_task(_deliver(events, futures, ack, gate, failed))
    if delivering is not None:
        await delivering


async def _deliver(
    events: Sequence[T],
    futures: list[Any],
    ack: Callable[[Sequence[T]], Awaitable[Any]],
    gate: CommitGate | None,
    failed: Callable[[], None],
) -> None:
    try:
        if futures:
            await asyncio.gather(*futures)
        await ack(events)
    except Exception:
        failed()
        raise
    finally:
        if gate is not None:
            await gate.leave_batch()


_force_commit = faust_consumer.Consumer.force_commit


async def _force_commit_between_batches(self: Any, *args: Any, **kwargs: Any) -> Any:
    gate: CommitGate | None = getattr(self.app, _GATE, None)
    if gate is None:
        return await _force_commit(self, *args, **kwargs)
    async with gate.commit():
        committed = await _force_commit(self, *args, **kwargs)
        # still inside the gate: no batch runs before the partition is read again from the hole
        holes, gate.holes = gate.holes, {}
        for tp, offset in holes.items():
            if tp in self.assignment():
                await self.seek(tp, offset)
        return committed


faust_consumer.Consumer.force_commit = _force_commit_between_batches  # type: ignore[method-assign]

_new_offset = faust_consumer.Consumer._new_offset


def _offset_after_last_acked(self: Any, tp: Any) -> int | None:
    """The offset to commit for `tp`: one past the last acked message, or up to a hole.

    faust commits only up to the first gap in the acked offsets, counting on `_drain_messages`
    to record the offsets it never delivers; it misses some, and a read_committed consumer never
    delivers transaction markers or aborted records, which fill `scope-usage` (written in
    transactions). The transaction then commits every output of a batch but only part of its
    offsets (double count after a crash), or a partition with a gap at its head never commits
    again. With the commit gate every message delivered below the last acked one has been
    processed, so a gap there is offsets that were never delivered.

    In topics registered as contiguous (`cost-events`: no transaction writes it, its offsets
    have no holes) a gap means faust dropped deliveries: after the other worker's kill -9, in
    about 1 of 6 runs of the two-worker test, a run of a partition's events never reached the
    agent while later ones did. There the commit stops at the hole and the partition is sought
    back to it (`_force_commit_between_batches`): the missing events are delivered again, and
    the ones after the hole, whose outputs this transaction commits, come again as repeats that
    the dedupe table drops.
    """
    gate: CommitGate | None = getattr(self.app, _GATE, None)
    if gate is None:
        return _new_offset(self, tp)  # type: ignore[no-any-return]
    acked = self._acked[tp]
    if not acked:
        return None
    last = int(max(acked))
    if tp.topic in gate.contiguous_topics:
        committed = self._committed_offset[tp]
        start = int(committed) if committed is not None else int(min(acked))
        present = {int(o) for o in acked}
        hole = next((o for o in range(start, last + 1) if o not in present), None)
        if hole is not None:
            log.warning("%s: offsets from %d never reached the agent (acked up to %d); reading again", tp, hole, last)
            gate.holes[tp] = hole
            kept = [o for o in acked if o > hole]
            acked[:] = kept
            self._acked_index[tp].intersection_update(kept)
            return hole if committed is None or hole > committed else None
    acked.clear()
    self._acked_index[tp].clear()
    self._gap.pop(tp, None)
    return last + 1


faust_consumer.Consumer._new_offset = _offset_after_last_acked  # type: ignore[method-assign]

_resume_partitions = faust_consumer.Consumer.resume_partitions


def _resume_stream_partitions_with_flow_stopped(self: Any, tps: Iterable[Any]) -> None:
    """Stop the flow when faust resumes the stream partitions after a recovery.

    `Recovery._resume_streams` resumes them, then awaits the seek to the committed offsets, then
    clears the stream queues (`flow_control.resume`) and resumes the flow. With the flow still
    running from the changelog recovery, records fetched in between reach the agents: processed
    and then read again after the seek (a scope-usage record counted twice), or cleared from the
    queues after faust's read offset has moved past them (never processed: the holes
    `_offset_after_last_acked` sees). Stopped here, nothing flows until faust resumes it, after
    the seek.
    """
    tps = list(tps)
    if getattr(self.app, _GATE, None) is not None and any(not self._is_changelog_tp(tp) for tp in tps):
        self.stop_flow()
    _resume_partitions(self, tps)


faust_consumer.Consumer.resume_partitions = _resume_stream_partitions_with_flow_stopped  # type: ignore[method-assign]


def ensure_changelog_topics(app: Any, settings: Settings, timeout: float = 30.0) -> None:
    """Create the tables' changelog topics before the faust app starts.

    faust creates them itself while starting, just before its consumer subscribes; the group
    leader's metadata may not have the last one yet, and aiokafka keeps that metadata for
    minutes: the leader's assignor logs "Ignoring missing topic" and assigns that changelog's
    partitions to nobody, so nobody recovers that table at a rebalance (the scope budgets were
    lost at the first rebalance after a deployment). Created first, they are in the metadata
    from the start. Same partitions and compaction as faust's own.
    """
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            table.changelog_topic.get_topic_name(),
            num_partitions=table.partitions or settings.partitions,
            replication_factor=settings.replication_factor,
            config={"cleanup.policy": "compact"},
        )
        for table in app.tables.values()
        if table.changelog_topic.get_topic_name() not in existing
    ]
    if not wanted:
        return
    for future in admin.create_topics(wanted, operation_timeout=timeout).values():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


async def abort_transactions(producer: Any, keep: Iterable[str] = ()) -> list[str]:
    """Abort the open transaction of every transactional producer not in `keep`, stop it and
    forget it (faust creates a new one, with a new epoch, when the partition is assigned).

    Returns the transactional ids dropped. A producer already fenced cannot abort; the broker
    aborted its transaction when the new owner registered the id.
    """
    kept = set(keep)
    dropped = []
    for tid in [t for t in list(producer._transaction_producers) if t not in kept]:
        txn_producer = producer._transaction_producers.pop(tid)
        dropped.append(tid)
        try:
            manager = txn_producer._txn_manager
            if manager is not None and manager.is_in_transaction():
                await txn_producer.abort_transaction()
        except Exception as exc:  # fenced, or the broker is away: its coordinator aborts it
            log.warning("could not abort transaction %s: %r", tid, exc)
        await txn_producer.stop()
    return dropped


def forget_uncommitted_offsets(consumer: Any) -> None:
    """Drop faust's record of messages processed but not committed, so none of them is committed
    later on the strength of outputs that were aborted; they are read again from the committed
    offset (faust seeks there after every assignment)."""
    consumer._acked.clear()
    consumer._acked_index.clear()
    consumer._gap.clear()


def clear_tables(app: Any) -> None:
    """Empty every table's memory store and make the next recovery read each changelog from its
    start (a memory store has no persisted offset, so None means "from the beginning")."""
    for table in app.tables.values():
        store = table.data
        store._clear()  # the store's own clear: a store with an index (processors.dedupe) drops it too
        store._key_partition.clear()
    recovery = app.tables.recovery
    recovery.active_offsets.clear()
    recovery.active_highwaters.clear()
    recovery.standby_offsets.clear()
    recovery.standby_highwaters.clear()


async def reset_to_committed(app: Any) -> None:
    """Make this worker's state what is committed: no open transaction, no processed-but-
    uncommitted offset, tables rebuilt from the committed changelogs at the coming assignment.

    Runs when faust has finished revoking (its `on_partitions_revoked` signal): the agents are
    idle and the flow is stopped until recovery ends.
    """
    consumer = app.consumer
    # a periodic commit in flight must land (or fail) before its producer goes away
    await consumer.maybe_wait_for_commit_to_finish()
    forget_uncommitted_offsets(consumer)
    if app.in_transaction:
        dropped = await abort_transactions(consumer.transactions.producer)
        if dropped:
            log.info("rebalance: aborted and stopped %d transactional producers", len(dropped))
    clear_tables(app)


def install(app: Any, contiguous_topics: Iterable[str] = ()) -> None:
    """Give a faust app under exactly-once its commit gate and the rebalance fixes.

    `contiguous_topics`: input topics written without transactions (offsets without holes).
    """
    setattr(app, _GATE, CommitGate(contiguous_topics))

    async def on_revoked(sender: Any, revoked: set[Any], **_: Any) -> None:
        if app.should_stop:
            return
        try:
            await reset_to_committed(app)
        except Exception:
            # half-reset state must never be processed on: a restart rebuilds it from the changelog
            log.critical("resetting state at a rebalance failed; exiting", exc_info=True)
            os._exit(EXIT_STATE_UNSAFE)

    async def on_assigned(sender: Any, assigned: set[Any], **_: Any) -> None:
        # Defensive: every revocation dropped every producer, so none should be left for a
        # partition this worker no longer owns; a fenced one would fail every send.
        if not app.in_transaction:
            return
        transactions = app.consumer.transactions
        active = transactions._tps_to_transactional_ids(set(assigned))
        for tid in await abort_transactions(transactions.producer, keep=active):
            log.warning("stopped stale transactional producer %s", tid)

    app.on_partitions_revoked.connect(on_revoked)
    app.on_partitions_assigned.connect(on_assigned)
