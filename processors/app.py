"""The faust-streaming app: validate, dedupe, price, budget, signal, alert.

Agent `ledger` consumes `cost-events` in batches (`take_events`). For each event it validates
(bad input goes to `cost-events.dlq` with its reason; the stream goes on), drops repeats of
an `event_id`, clamps a future date / flags a late one, prices, publishes the PricedEvent to
`priced-events` on the source partition, and applies the event's usage (spend, or a
call_started's reservation, or the settlement of one) to the session's budgets. When a
limit is reached (spend plus open reservations) it publishes a Signal and the session's
status through a separate low-latency producer; a threshold crossed by spend is an Alert.

Budgets wider than a session (team, agent type, ...) see events from every partition, so
the session's worker forwards their usage, one record per scope value per source partition per
batch (each event's usage an item of it, in order), keyed by the scope value, to the internal
`scope-usage` topic; agent `scopes` consumes it and keeps those budgets, one owner per key. A breach signals every session seen in that budget's window, and any session seen
later in it at its first record.

Exactly-once: with `processing_guarantee="exactly_once"` faust wraps, per source partition,
the outputs (priced events, dead letters, scope-usage records, alerts), the table changelog
writes and the consumed offsets in one Kafka transaction. Dedupe and budget state live in
memory (faust memory-store tables) and reach their changelogs once per changed key per batch,
inside that transaction; after a crash the worker restores them from the committed changelog
and re-reads from the committed offset, so an event is counted once and an alert fires once.
faust 0.15.3 alone breaks this at rebalances and when a commit falls inside a batch;
`processors.eos` fixes both (commits wait for the batches in flight and commit whole batches;
every rebalance rebuilds the state from what is committed, as a restart does).
Signals are sent outside the transaction (they must be fast); a replay re-sends the same
`signal_id`, which consumers treat as a repeat. Wide budgets' limits are signalled by
`processors.scope_preview` from the scope-usage records before they commit (p50 12.6 ms,
max 38.7 ms over 20 trials in bench.scope_signal_latency; 0.6 s when they waited for the
commit); the agent's committed path reaches the same limits and sends nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import faust
import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from pydantic import ValidationError

from agentledger.settings import Settings
from processors import eos, fetching, intake, metrics
from processors.budget import (
    BudgetBook,
    BudgetState,
    Crossing,
    EventClock,
    attribution_of,
    default_session_policy,
    make_alert,
    make_signal,
    scope_value,
    seed_states,
    unpriced_kill_signal,
    usage_of,
)
from processors.dedupe import STORE_URL, DedupeStore, Seen, record_key
from processors.errors import ProcessorError
from processors.pricing import Pricer
from processors.scope_preview import BAD_ITEM, ScopePreview, apply_scope_item, parse_scope_record
from schemas.budgets import Action, BudgetPolicy, PolicyRecord, Scope, SessionState, SessionStatus, Signal, split_record
from schemas.codec import encode
from schemas.events import MAX_EVENT_BYTES, CostEvent, DeadLetter, PricedEvent
from schemas.topics import (
    ALERTS,
    BUDGET_POLICIES,
    COST_EVENTS,
    COST_EVENTS_DLQ,
    PRICED_EVENTS,
    SCOPE_USAGE,
    SESSION_STATUS,
    SIGNALS,
)

log = logging.getLogger(__name__)

BATCH_MAX = 1000
BATCH_WITHIN_S = 0.01
# A batch's records to one partition leave in one produce request, not one per 16 KiB (aiokafka's
# default, about 27 priced events); under faust's 1 MB request limit and the broker's message.max.bytes.
PRODUCER_BATCH_BYTES = 512 * 1024
# Once a batch held BUSY_FROM_EVENTS or more, the stream is busy: the next batch fills up to
# BUSY_BATCH events or for BUSY_LINGER_S (faust feeds the stream while the previous batch's records
# are on their way); a quiet stream's lone event never waits.
BUSY_FROM_EVENTS = 10
BUSY_BATCH = 500
BUSY_LINGER_S = 0.01
DEDUPE_CLEANUP_INTERVAL_S = 300.0
# a scope-usage record carries up to this many events' usage (about 300 bytes each): well under
# the broker's 1 MB message limit
SCOPE_ITEMS_PER_RECORD = 500
# parsed session budget states kept beside their stored bytes; past this many, forgotten at once
MAX_PARSED_STATES = 200_000
BROKER_SESSION_TIMEOUT_S = 10.0
EXIT_STATE_UNSAFE = 70
# (signal id, session) pairs a publisher remembers having sent; the oldest are forgotten first
SENT_MEMORY = 100_000

STATE_FOR_ACTION = {
    Action.WARN: SessionState.WARNED,
    Action.DOWNGRADE: SessionState.DOWNGRADED,
    Action.PAUSE: SessionState.PAUSED,
    Action.KILL: SessionState.KILLED,
}


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- validation


class Rejection:
    __slots__ = ("code", "reason")

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason


def _span(offsets: Sequence[int] | None) -> str:
    """A list of offsets in a few characters: how many, lowest and highest."""
    return f"{len(offsets)} ({min(offsets)}..{max(offsets)})" if offsets else "none"


@dataclass(frozen=True, slots=True)
class SplitPolicies:
    """The policies in force, once per batch: those a session's partition keeps (their scope
    includes the session), and the enabled wider ones whose usage is forwarded."""

    session: tuple[BudgetPolicy, ...]
    wide: tuple[BudgetPolicy, ...]


def split_policies(policies: Sequence[BudgetPolicy]) -> SplitPolicies:
    return SplitPolicies(
        session=tuple(p for p in policies if Scope.SESSION in p.scope),
        wide=tuple(p for p in policies if Scope.SESSION not in p.scope and p.enabled),
    )


def received(event: CostEvent, received_at: datetime, occurred_at: datetime | None = None) -> CostEvent:
    """The event stamped with `received_at` (and a clamped `occurred_at`) in place, as
    `event.model_copy(update=...)` would set them, and returned: the worker stamps its own fresh
    parse, which nothing else holds (0.14 µs an event; a copy cost 0.92). The values are the
    worker's own aware UTC datetimes, as validation would leave them.
    tests/processors/test_validation.py checks the result equals pydantic's copy."""
    values = event.__dict__
    values["received_at"] = received_at
    if occurred_at is not None:
        values["occurred_at"] = occurred_at
    event.__pydantic_fields_set__.add("received_at")
    return event


# CostEvent.model_validate_json is this call inside a Python wrapper that cost 1 us an event
_validate_event_json = CostEvent.__pydantic_validator__.validate_json


def parse_event(raw: bytes | None) -> CostEvent | Rejection:
    """A CostEvent, or why the bytes are not one (the dead-letter policy's input)."""
    if raw is None or not raw:
        return Rejection("empty", "empty message value")
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection("oversize", f"event is {len(raw)} bytes, more than {MAX_EVENT_BYTES}")
    try:
        return _validate_event_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            return Rejection("invalid_json", f"invalid JSON: {errors[0]['msg']}"[:4096])
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '<event>'}: {e['msg']}" for e in errors]
        return Rejection("schema", "; ".join(parts)[:4096])


# --------------------------------------------------------------------------- policies


class PolicyWatcher:
    """Every budget policy, read from the compacted `budget-policies` topic on every worker.

    No consumer group: each worker reads all partitions from the beginning. `start()` returns
    once the topic has been read up to its end, then a daemon thread follows new writes.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic(BUDGET_POLICIES.suffix)
        self._policies: dict[str, BudgetPolicy] = {}
        self._seeds: dict[str, dict[str, dict[str, Any]]] = {}
        """policy id -> state key -> the state its opening balance starts (as JSON)."""
        self._defaults: tuple[BudgetPolicy, ...] = ()
        if settings.session_token_cap is not None:
            self._defaults = (default_session_policy(settings.session_token_cap),)
        self.current: tuple[BudgetPolicy, ...] = self._defaults
        self.by_id: dict[str, BudgetPolicy] = {p.policy_id: p for p in self._defaults}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"{settings.worker_id}-policies",  # required by the client, never joined
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 100,
            }
        )

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        policy_id = key.decode("utf-8", "replace")
        if value is None:
            self._policies.pop(policy_id, None)
            self._seeds.pop(policy_id, None)
        else:
            try:
                policy, balance = split_record(PolicyRecord.model_validate_json(value))
            except ValidationError as exc:
                log.error("policy %s invalid, ignored: %s", policy_id, exc)
                return
            # before the policy itself: a batch that sees the policy finds its seeds
            seeds: dict[str, dict[str, Any]] = {}
            if balance is not None:
                seeds = {k: state.to_json() for k, state in seed_states(policy, balance).items()}
                log.info("policy %s: opening balance of %d budgets as of %s", policy_id, len(seeds), balance.as_of)
            self._seeds[policy_id] = seeds
            self._policies[policy_id] = policy
        current = self._defaults + tuple(self._policies.values())
        # one assignment each: the worker's thread reads them without a lock
        self.by_id = {p.policy_id: p for p in current}
        self.current = current

    def seed(self, key: str) -> dict[str, Any] | None:
        """The state an opening balance starts for a budget state key (`policy id` first), if any."""
        return self._seeds.get(key.partition("\x1f")[0], {}).get(key)

    def _poll(self, timeout: float) -> bool:
        msg = self._consumer.poll(timeout)
        if msg is None:
            return False
        if msg.error():
            if cast(KafkaError, msg.error()).code() != KafkaError._PARTITION_EOF:
                log.warning("policy consumer: %s", msg.error())
            return False
        self._apply(msg.key(), msg.value())
        return True

    def start(self, timeout: float = 30.0) -> None:
        meta = self._consumer.list_topics(self.topic, timeout=timeout)
        parts = sorted(meta.topics[self.topic].partitions)
        tps = [TopicPartition(self.topic, p, -2) for p in parts]  # -2: from the beginning
        self._consumer.assign(tps)
        ends = {
            p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=timeout)[1] for p in parts
        }
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = self._consumer.position([TopicPartition(self.topic, p) for p in parts])
            if all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in positions):
                break
            self._poll(0.2)
        self._thread = threading.Thread(target=self._run, name="policy-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll(0.2)
            except Exception:  # the watcher must outlive a broker hiccup
                log.exception("policy watcher poll failed")
                time.sleep(1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._consumer.close()


# --------------------------------------------------------------------------- signals


class SignalPublisher:
    """Signals and session statuses, outside any transaction, as fast as the broker allows."""

    def __init__(self, settings: Settings) -> None:
        self.signals_topic = settings.topic(SIGNALS.suffix)
        self.status_topic = settings.topic(SESSION_STATUS.suffix)
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "linger.ms": 0,
                "acks": "all",
                "enable.idempotence": True,
                # same partitions as the hook and Java/aiokafka for a given session id
                "partitioner": "murmur2_random",
            }
        )
        self._state: dict[str, SessionState] = {}
        self._rank: dict[str, int] = {}
        # the agent's loop and the scope preview's thread both publish; a session's status must
        # only ever move to a stronger action
        self._lock = threading.Lock()
        self._sent: dict[tuple[str, str], None] = {}

    def publish(self, signal: Signal) -> bool:
        """Send a signal and the session's new status; False (nothing sent) if this process has
        sent this signal to this session already (the scope preview and the committed path both
        reach the same limits; after a restart the replay sends it again, a repeat for consumers)."""
        with self._lock:
            sent = (signal.signal_id, signal.session_id)
            if sent in self._sent:
                return False
            self._sent[sent] = None
            if len(self._sent) > SENT_MEMORY:
                del self._sent[next(iter(self._sent))]
            self._publish(signal)
            return True

    def already_sent(self, signal_id: str, session_id: str) -> bool:
        return (signal_id, session_id) in self._sent

    def _publish(self, signal: Signal) -> None:
        key = signal.session_id.encode()
        self._producer.produce(self.signals_topic, key=key, value=encode(signal))
        metrics.SIGNALS_SENT.labels(signal.action.value).inc()
        rank = signal.action.rank
        if rank >= self._rank.get(signal.session_id, -1):
            self._rank[signal.session_id] = rank
            status = SessionStatus(
                session_id=signal.session_id,
                state=STATE_FOR_ACTION[signal.action],
                signal=signal,
                updated_at=signal.issued_at,
            )
            self._producer.produce(self.status_topic, key=key, value=encode(status))
        self._producer.poll(0)

    def flush(self, timeout: float = 5.0) -> int:
        return self._producer.flush(timeout)


# --------------------------------------------------------------------------- the app


async def drain_batches(stream: Any, max_events: int, within: float) -> AsyncIterator[list[faust.EventT]]:
    """The stream's events in batches of what has arrived: a batch is yielded as soon as the stream's
    queue is empty (or it holds `max_events`, or `within` seconds passed). The caller acks each
    event once its batch is processed and its outputs delivered (`eos.pipeline_batches`).

    faust's `take_events` waits `within` seconds for a batch to fill whenever fewer than `max_events`
    are queued: on a quiet stream that delay (10 ms here) was most of a signal's latency. Here a lone
    event goes at once. The stream goes on filling the next batch while the caller processes one
    (mostly while its records are on their way to the broker), so under load a batch is what
    arrived during the previous one: it was what arrived in a 2 ms wait after it, about 50 events
    at 50,000 queued (bench.pipeline), and per-batch costs (sends, delivery round trips, one
    changelog record per key) were paid for each of those. Acking after delivery (`take_events`
    acks after processing) is what keeps a batch's offsets out of a commit until its outputs are
    sent; events of the next batch are not acked, and come after the acked ones in their partitions.
    """
    events: list[faust.EventT] = []
    ready = asyncio.Event()  # the batch may go: see `add`
    room = asyncio.Event()  # `events` was full and has been taken
    queue = stream.channel.queue
    busy = False  # the previous batch was big: the next one fills up to BUSY_BATCH, for BUSY_LINGER_S

    async def add(value: Any) -> Any:
        event = stream.current_event
        if event is None:
            raise RuntimeError("drain_batches: the stream has no current event")
        events.append(event)
        n = len(events)
        if n >= max_events:
            ready.set()
            room.clear()
            await stream.wait(room)  # never more than max_events in a batch
        elif (n >= BUSY_BATCH) if busy else queue.empty():
            ready.set()
        return value

    acks = stream.enable_acks
    stream.enable_acks = False  # acked below, after the caller processed them
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not ready.is_set():
                # plain asyncio: mode's wait_for_stopped creates two tasks per call, once per batch
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), BUSY_LINGER_S if busy else within)
            if not events:
                busy = False
                ready.clear()
                continue
            batch = events[:]
            events.clear()
            busy = len(batch) >= BUSY_FROM_EVENTS
            ready.clear()
            room.set()
            yield batch
    finally:
        stream.enable_acks = acks
        stream._processors.remove(add)


SAME_PARTITION = -1


Outgoing = tuple[str, bytes | None, bytes | None, int | None]
"""One record for Kafka: (topic, key, value, partition); partition None means by key (the
producer's partitioner). A plain tuple: each cost event makes two, and a slots dataclass cost
0.09 µs more each to make and read."""

# a batch's records by the source partition whose transaction they belong to
Outbox = dict[int, list[Outgoing]]


def put(
    outbox: Outbox,
    source_partition: int,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    to_partition: int | None = SAME_PARTITION,
) -> None:
    """Queue a record in `source_partition`'s transaction; it goes to the same partition number
    of `topic` unless `to_partition` says otherwise."""
    out = source_partition if to_partition == SAME_PARTITION else to_partition
    records = outbox.get(source_partition)
    if records is None:
        records = outbox[source_partition] = []
    records.append((topic, key, value, out))


class TransactionGone(ProcessorError):
    """A batch's source partition has no transactional producer any more (it moved to another worker
    during the batch): the worker exits and its state is rebuilt from the changelog at restart."""


async def _append_records(client: Any, records: list[Outgoing], futures: list[Any]) -> None:
    """Hand records to an aiokafka producer: one record batch per topic partition named by the caller
    (one delivery future each, instead of one future and one callback per record), keyed ones
    one by one through its partitioner. Order within a topic partition is kept."""
    builders: dict[tuple[str, int], Any] = {}
    for topic, key, value, partition in records:
        if partition is None:
            futures.append(await client.send(topic, value, key=key))
            continue
        tp = (topic, partition)
        builder = builders.get(tp)
        if builder is None:
            builder = builders[tp] = client.create_batch()
        if builder.append(timestamp=None, key=key, value=value) is None:  # full
            futures.append(await client.send_batch(builder, topic, partition=partition))
            builder = builders[tp] = client.create_batch()
            if builder.append(timestamp=None, key=key, value=value) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes is larger than a producer batch")
    for (topic, partition), builder in builders.items():
        futures.append(await client.send_batch(builder, topic, partition=partition))


def _store_dict(table: Any) -> dict[bytes, bytes]:
    """The dict that is a table's memory store (faust.stores.memory keeps its items in `data`):
    read and written as the store's mapping, each access went through two Python calls
    (Mapping.get, FastUserDict.__getitem__)."""
    return cast(dict[bytes, bytes], table.data.data)


class LedgerApp:
    """The faust app and the state the agent needs, built from one Settings object."""

    def __init__(
        self,
        settings: Settings,
        *,
        pricer: Pricer | None = None,
        policies: PolicyWatcher | None = None,
        signals: SignalPublisher | None = None,
        processing_guarantee: str = "exactly_once",
        now: Callable[[], datetime] = _now,
    ) -> None:
        self.settings = settings
        self.pricer = pricer or Pricer(settings)
        self.policies = policies or PolicyWatcher(settings)
        self.signals = signals or SignalPublisher(settings)
        self.now = now
        settings.worker_data_dir.mkdir(parents=True, exist_ok=True)  # faust makes only the last level
        self.app = faust.App(
            settings.worker_id,
            broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",")],
            processing_guarantee=processing_guarantee,
            store="memory://",
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            web_enabled=False,
            autodiscover=False,
            consumer_auto_offset_reset="earliest",
            broker_max_poll_records=BATCH_MAX,
            producer_max_batch_size=PRODUCER_BATCH_BYTES,
            stream_buffer_maxsize=4 * BATCH_MAX,
            # a crashed worker's partitions move after 10 s rather than faust's default 60 s
            broker_session_timeout=BROKER_SESSION_TIMEOUT_S,
            broker_heartbeat_interval=3.0,
            broker_commit_interval=settings.commit_interval_s,
            Monitor=fetching.LeanMonitor,
            datadir=str(settings.worker_data_dir / "{conf.name}"),
        )
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        self.source = self.app.topic(settings.topic(COST_EVENTS.suffix), **raw)
        self.priced_topic = self.app.topic(settings.topic(PRICED_EVENTS.suffix), **raw)
        self.dlq_topic = self.app.topic(settings.topic(COST_EVENTS_DLQ.suffix), **raw)
        self.scope_topic = self.app.topic(settings.topic(SCOPE_USAGE.suffix), **raw)
        self.alerts_name = settings.topic(ALERTS.suffix)
        # bytes in and out: faust picks the changelog's (and recovery's) codec from these types
        raw_table: dict[str, Any] = {"partitions": settings.partitions, "key_type": bytes, "value_type": bytes}
        self.dedupe = self.app.Table("dedupe", store=STORE_URL, **raw_table)
        self.budgets = self.app.Table("budgets", **raw_table)
        self.scope_budgets = self.app.Table("scope-budgets", **raw_table)
        self.book = BudgetBook(loader=self._load_budget)
        # Session budget states as objects, beside the bytes object stored for each: a load finding
        # the store still holding that very object (not equal bytes: the same object) reuses the
        # state instead of parsing it. A restore, a rebalance or another writer stores other
        # objects, so nothing stale is ever reused. Not for scope budgets: the scope preview reads
        # their states on its own thread and must never share an object the agent changes.
        self._parsed_budgets: dict[bytes, tuple[bytes, BudgetState]] = {}
        self._quiet_commits: set[asyncio.Future[Any]] = set()  # held until done: the loop keeps weak references
        self.scope_book = BudgetBook(loader=self._load_scope_budget)
        self.scope_name = self.scope_topic.get_topic_name()
        self.source_name = self.source.get_topic_name()
        self.priced_name = self.priced_topic.get_topic_name()
        self.dlq_name = self.dlq_topic.get_topic_name()
        self.dedupe_changelog = self.dedupe.changelog_topic.get_topic_name()
        self.budgets_changelog = self.budgets.changelog_topic.get_topic_name()
        self.scope_changelog = self.scope_budgets.changelog_topic.get_topic_name()
        self.app.agent(self.source, name="ledger")(self._agent)
        self.app.agent(self.scope_topic, name="scopes")(self._scope_agent)
        self.preview: ScopePreview | None = None
        if processing_guarantee == "exactly_once":
            # the hook's producer is idempotent, not transactional: no markers in cost-events
            eos.install(self.app, contiguous_topics=[self.source_name])
            # wide budgets' signals must not wait for the commit that makes scope-usage readable
            self.preview = ScopePreview(
                settings,
                load_state=self._load_scope_budget,
                policies=lambda: self.policies.by_id,
                publisher=self.signals,
                now=self.now,
            )
            app_signals = cast(Any, self.app)  # faust's signal types do not admit bound methods
            app_signals.on_partitions_revoked.connect(self._preview_revoked)
            app_signals.on_partitions_assigned.connect(self._preview_assigned)
        cast(Any, self.app).on_partitions_revoked.connect(self._forget_parsed_states)
        self.intake = intake.Intake(self.source_name, maxsize=4 * BATCH_MAX)
        fetching.direct(self.app, self.intake)
        fetching.install(self.app)
        self.app.timer(DEDUPE_CLEANUP_INTERVAL_S)(self._expire_dedupe)

    # -- state through faust's memory store: our objects in, raw bytes from a restore

    # A key with no state yet starts from its policy's opening balance, if it has one: the seeded
    # state then reaches the changelog with the batch, so a restart restores it instead of seeding
    # it again.

    def _load_budget(self, key: str) -> BudgetState | dict[str, Any] | None:
        bkey = key.encode()
        raw = _store_dict(self.budgets).get(bkey)
        if raw is None:
            return self.policies.seed(key)
        parsed = self._parsed_budgets.get(bkey)
        if parsed is not None and parsed[0] is raw:
            return parsed[1]  # the state this worker wrote as `raw` (parsing it again cost 9 % of the CPU)
        return orjson.loads(raw)

    def _load_scope_budget(self, key: str) -> dict[str, Any] | None:
        raw = _store_dict(self.scope_budgets).get(key.encode())
        return self.policies.seed(key) if raw is None else orjson.loads(raw)

    def partition_report(self) -> str:
        """The worker's view of each cost-events partition it holds, for an operator asking why one
        does not move (`kill -USR1 <worker pid>` logs it): faust's active, paused and buffered sets,
        aiokafka's pause, position and fetched-but-untaken records, the read and committed offsets."""
        consumer: Any = self.app.consumer
        client = getattr(consumer._thread, "_consumer", None)
        assignment = client._subscription.subscription.assignment if client is not None else None
        fetched = client._fetcher._records if client is not None else {}
        gate = eos.commit_gate(self.app) if self.app.in_transaction else None
        lines = [
            f"generation {self.app.consumer_generation_id}, flow {'on' if consumer.flow_active else 'off'}, "
            f"in recovery {self.app.in_recovery}, intake {len(self.intake)} queued, "
            f"commit gate {gate.describe() if gate is not None else 'none'}"
        ]
        if self.app.in_transaction:
            producer: Any = consumer.transactions.producer
            for tid, client in sorted(producer._transaction_producers.items()):
                manager = getattr(client, "_txn_manager", None)
                lock = producer._trn_locks.get(tid)
                lines.append(
                    f"  producer {tid}: {getattr(manager, 'state', '?')}, "
                    f"lock {'held' if lock is not None and lock.locked() else 'free'}"
                )
        for tp in sorted(tp for tp in consumer.assignment() if tp.topic == self.source_name):
            where = "faust: " + (
                "paused" if tp in consumer._paused_partitions
                else "active" if tp in (consumer._active_partitions or ())
                else "buffered" if tp in consumer._buffered_partitions
                else "not fetched"
            )  # fmt: skip
            kafka = "aiokafka: no consumer"
            if assignment is not None:
                try:
                    state = assignment.state_value(tp)
                    kafka = (
                        f"aiokafka: {'paused' if state.paused else 'fetching'}, position "
                        f"{state.position if state.has_valid_position else 'none'}"
                    )
                except Exception as exc:  # reassigned meanwhile: say so, the report is best effort
                    kafka = f"aiokafka: {exc!r}"[:120]
            result = fetched.get(tp)
            lines.append(
                f"  {tp.topic}[{tp.partition}] {where}; {kafka}; fetched untaken {'yes' if result else 'no'}; "
                f"read {consumer._read_offset.get(tp)}, committed {consumer._committed_offset.get(tp)}, "
                f"acked {_span(consumer._acked.get(tp))}"
            )
        return "\n".join(lines)

    async def _forget_parsed_states(self, sender: Any, revoked: set[Any], **_: Any) -> None:
        self._parsed_budgets.clear()  # the identity check keeps them right; this frees the memory

    async def _preview_revoked(self, sender: Any, revoked: set[Any], **_: Any) -> None:
        if self.preview is not None:
            self.preview.set_owned(frozenset())

    async def _preview_assigned(self, sender: Any, assigned: set[Any], **_: Any) -> None:
        if self.preview is not None:
            self.preview.set_owned(frozenset(tp.partition for tp in assigned if tp.topic == self.scope_name))

    async def _append_outbox(self, outbox: Outbox, source: str) -> list[Any]:
        """Hand a batch's records to the producer, each source partition's in its transaction
        (exactly-once), else plainly; returns their delivery futures, to be awaited before the batch's
        offsets are acked, so an error stops the worker first.

        faust's own Topic.send derives the transactional id from the *consumer's* metadata for the
        output topic; for a topic the worker does not consume (priced-events, the DLQ) that is
        unknown, so faust silently sends outside the transaction. Here the id is the one faust
        commits the source partition's offsets under: `{app id}-{topic group}-{partition}`.

        A partition's records are appended to its producer under faust's lock for that transaction,
        all at once: faust's commit timer takes the same lock, so it commits either none or all of a
        batch's outputs and changelog records for that partition, never a part (a crash after a
        commit that held only the batch's dedupe records would skip its events on the replay).
        The records go straight to aiokafka, batched per topic partition: faust's Producer.send,
        and aiokafka's per-record futures, cost more than the rest of an event's processing.
        """
        app = self.app
        futures: list[Any] = []
        if app.in_transaction:
            producer = cast(Any, app.consumer.transactions).producer
            group = app.assignor.group_for_topic(source)
            for source_partition, records in outbox.items():
                tid = f"{app.conf.id}-{group}-{source_partition}"
                client = producer._transaction_producers.get(tid)
                if client is None:
                    raise TransactionGone(f"no transactional producer {tid}")
                async with producer._trn_locks[tid]:
                    await _append_records(client, records, futures)
        else:
            client = cast(Any, await app.maybe_start_producer())._ensure_producer()
            for records in outbox.values():
                await _append_records(client, records, futures)
        return futures

    async def _send_outbox(self, outbox: Outbox, source: str) -> None:
        """`_append_outbox`, then wait for the delivery of every record."""
        futures = await self._append_outbox(outbox, source)
        if futures:
            await asyncio.gather(*futures)

    async def _agent(self, stream: faust.StreamT) -> None:
        """The cost-events agent: batches from the intake (processors.intake), not from `stream`
        (faust still subscribes the topic and assigns its partitions for this agent)."""
        app = self.app
        consumer = app.consumer
        app.flow_control.manage_queue(cast(Any, self.intake))  # cleared with the stream buffers
        gate = eos.commit_gate(app) if app.in_transaction else None

        def commit_now() -> None:
            task = asyncio.ensure_future(consumer.commit())
            self._quiet_commits.add(task)
            task.add_done_callback(self._quiet_commit_done)

        async def take() -> AsyncIterator[list[Any]]:
            # Once no cost event has arrived for `quiet_commit_s` after a batch, commit (the same
            # commit as faust's timer, through the commit gate) rather than wait for the commit
            # interval (2.8 s by default): the priced events of a burst's last batch, or of a lone
            # event, reach the sink (read_committed) that much sooner. Under load commits come every
            # 10,000 acked events (faust's `broker_commit_every`); when quiet, one per quiet spell.
            quiet_s = self.settings.quiet_commit_s
            batches = self.intake.batches(
                BATCH_MAX, BUSY_FROM_EVENTS, BUSY_BATCH, BUSY_LINGER_S, quiet_s, commit_now if quiet_s else None
            )
            async for messages in batches:
                intake.track(consumer, messages)
                yield messages

        async def ack(messages: Sequence[Any]) -> None:
            intake.ack(consumer, messages)

        await eos.pipeline_batches(take(), self.prepare_batch, ack, gate, self._batch_failed)

    def _quiet_commit_done(self, task: asyncio.Future[Any]) -> None:
        self._quiet_commits.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # as a failed timer commit: the offsets stay uncommitted and the next commit takes them
            log.warning("commit after the intake went quiet failed: %r", task.exception())

    async def _scope_agent(self, stream: faust.StreamT) -> None:
        await self._run_batches(stream, self.prepare_scope_batch)

    async def _run_batches(
        self, stream: faust.StreamT, prepare: Callable[[Sequence[faust.EventT]], Awaitable[list[Any]]]
    ) -> None:
        """The stream's batches through `prepare`, each one's delivery overlapping the next one's
        preparation (`eos.pipeline_batches`): the agent waited for the broker a quarter of its time,
        10 ms per batch in bench.pipeline under load. Under exactly-once a batch holds the commit
        gate until its records are delivered and its events acked (`processors.eos.CommitGate`)."""
        gate = eos.commit_gate(self.app) if self.app.in_transaction else None

        async def ack(events: Sequence[faust.EventT]) -> None:
            for event in events:
                await stream.ack(event)

        batches = drain_batches(stream, BATCH_MAX, BATCH_WITHIN_S)
        await eos.pipeline_batches(batches, prepare, ack, gate, self._batch_failed)

    def _batch_failed(self) -> None:
        """A batch could not be processed or delivered: exit, unless the worker is stopping anyway.

        The memory stores already hold the batch's dedupe ids and budgets, but its transaction will
        never commit. faust would restart the agent on that state and drop the batch's events as
        repeats; exiting makes the restart rebuild the state from the committed changelog instead
        (the supervisor restarts the process)."""
        if self.app.should_stop:
            return  # shutting down: nothing more will be processed by this process
        log.critical("batch failed; exiting so state is rebuilt from the changelog", exc_info=True)
        self.signals.flush(2.0)
        os._exit(EXIT_STATE_UNSAFE)

    async def handle_batch(self, messages: Sequence[Any]) -> None:
        """Process a batch of cost-events messages and wait for its records' delivery."""
        futures = await self.prepare_batch(messages)
        if futures:
            await asyncio.gather(*futures)

    async def prepare_batch(self, messages: Sequence[Any]) -> list[Any]:
        """Validate, dedupe, price and budget a batch of cost events, and hand its records to the
        producer; returns their delivery futures."""
        now = self.now()
        now_s = now.timestamp()
        now_text = now.isoformat()
        clock = EventClock.at(now, self.settings.max_future_skew_s, self.settings.late_grace_s)
        by_scope = split_policies(self.policies.current)
        seen_store = cast(DedupeStore, self.dedupe.data)
        horizon = now_s - self.settings.dedupe_retention_s
        in_batch: set[str] = set()
        fresh: dict[int, tuple[int, list[str]]] = {}  # source partition -> (first offset, new event ids)
        scope_items: dict[tuple[int, str], list[dict[str, Any]]] = {}  # (source partition, scope value)
        outbox: Outbox = {}
        signals_sent = 0
        metrics.EVENTS_CONSUMED.inc(len(messages))
        priced_count = 0
        for msg in messages:
            parsed = parse_event(msg.value)
            if isinstance(parsed, Rejection):
                self._dead_letter(outbox, msg, parsed, now)
                continue
            event_id = parsed.event_id
            if event_id in in_batch or seen_store.seen(event_id, horizon):
                metrics.EVENTS_DEDUPLICATED.inc()
                continue
            in_batch.add(event_id)
            if msg.partition in fresh:
                fresh[msg.partition][1].append(event_id)
            else:
                fresh[msg.partition] = (msg.offset, [event_id])
            at, clamped, late = clock.time_of(parsed.occurred_at)
            event = received(parsed, now, at if clamped else None)
            try:
                priced = self.pricer.price(event, now)
            except Exception as exc:  # a pricing bug must not stop the stream
                log.exception("pricing failed for %s", parsed.event_id)
                self._dead_letter(outbox, msg, Rejection("pricing_error", f"pricing failed: {exc!r}"), now)
                continue
            if clamped or late:
                priced = priced.model_copy(update={"clamped": priced.clamped or clamped, "late": late})
                (metrics.EVENTS_CLAMPED if clamped else metrics.EVENTS_LATE).inc()
            put(outbox, msg.partition, self.priced_name, event.session_id.encode(), encode(priced))
            priced_count += 1
            signals, alerts, forwards = self._budget(priced, by_scope, now, now_s, msg.partition, late, now_text)
            for signal in signals:
                self.signals.publish(signal)
                signals_sent += 1
            for alert_key, alert in alerts:
                put(outbox, msg.partition, self.alerts_name, alert_key, alert, to_partition=None)
            for sval, item in forwards:
                scope_items.setdefault((msg.partition, sval), []).append(item)
        metrics.EVENTS_PRICED.inc(priced_count)
        if signals_sent:
            await asyncio.get_running_loop().run_in_executor(None, self.signals.flush)
        for partition, (offset, ids) in fresh.items():
            key = record_key(partition, offset)
            value = seen_store.put(key, Seen(int(now_s), tuple(ids)), partition)
            put(outbox, partition, self.dedupe_changelog, key, value)
        for (partition, sval), items in scope_items.items():
            for i in range(0, len(items), SCOPE_ITEMS_PER_RECORD):
                record = orjson.dumps({"sv": sval, "items": items[i : i + SCOPE_ITEMS_PER_RECORD]})
                put(outbox, partition, self.scope_name, sval.encode(), record, to_partition=None)
        self._write_dirty(outbox, self.book, self.budgets, self.budgets_changelog, self._parsed_budgets)
        return await self._append_outbox(outbox, self.source_name)

    def _write_dirty(
        self,
        outbox: Outbox,
        book: BudgetBook,
        table: Any,
        changelog: str,
        parsed: dict[bytes, tuple[bytes, BudgetState]] | None = None,
    ) -> None:
        """Write the book's changed states to the table's store and changelog; with `parsed`,
        remember each state object beside the exact bytes stored for it, for the next load.

        The store is written without faust's per-key changelog message: the changelog record goes
        in the outbox, once per key per batch. Recording each key's partition lets faust drop the
        key from memory when that partition moves to another worker."""
        if parsed is not None and len(parsed) > MAX_PARSED_STATES:
            parsed.clear()
        store, key_partition = _store_dict(table), table.data._key_partition
        for skey, (state, partition) in book.take_dirty().items():
            bkey = skey.encode()
            value = orjson.dumps(state.to_json())
            store[bkey] = value
            key_partition[bkey] = partition
            put(outbox, partition, changelog, bkey, value)
            if parsed is not None:
                parsed[bkey] = (value, state)
        # the store is the state; the book's copies are per batch, so a rebalance never leaves them stale
        book.states.clear()

    def _budget(
        self,
        priced: PricedEvent,
        policies: SplitPolicies,
        now: datetime,
        now_s: float,
        partition: int,
        late: bool,
        now_text: str,
    ) -> tuple[list[Signal], list[tuple[bytes, bytes]], list[tuple[str, dict[str, Any]]]]:
        """(signals, alerts, (scope value, usage item) to forward) for one priced event.

        Budgets whose scope includes the session are kept here: all of a session's events are on
        this partition. Wider ones (team, agent type, ...) are spread over every partition, so
        their usage is forwarded to `scope-usage`, keyed by scope value, to the one owner of
        that key (`prepare_scope_batch`): one record per scope value per source partition per
        batch, with the items of its events in order. `now_s` and `now_text` are `now` as epoch
        seconds and ISO 8601, worked out once per batch.
        """
        event = priced.event
        signals: list[Signal] = []
        if priced.unpriced:
            metrics.EVENTS_UNPRICED.labels(self.pricer.unpriced_policy).inc()
            if self.pricer.unpriced_policy == "block":
                signals.append(unpriced_kill_signal(event, now))
        usage = usage_of(priced, now_s, self.settings.reservation_timeout_s)
        if usage is None or not (policies.session or policies.wide):
            return signals, [], []
        attribution = attribution_of(event)
        crossings = self.book.record(
            policies.session, attribution, event.occurred_at, usage, tag=partition, now=now, late=late
        )
        alerts: list[tuple[bytes, bytes]] = []
        if crossings:
            signals += self._signals_for(crossings, event.event_id, event.model, now)
            alerts = self._alerts_for(crossings, now)
        if not policies.wide:
            return signals, alerts, []
        wide: dict[str, list[str]] = {}
        for policy in policies.wide:
            sval = scope_value(policy, attribution)
            if sval is not None:
                wide.setdefault(sval, []).append(policy.policy_id)
        at_text = event.occurred_at.isoformat()
        forwards = [
            (
                sval,
                {
                    "p": ids,
                    "s": event.session_id,
                    "e": event.event_id,
                    "m": event.model,
                    "at": at_text,
                    "now": now_text,
                    "late": late,
                    "u": usage.to_json(),
                },
            )
            for sval, ids in wide.items()
        ]
        return signals, alerts, forwards

    @staticmethod
    def _signals_for(crossings: list[Crossing], trigger: str, model: str | None, now: datetime) -> list[Signal]:
        return [
            make_signal(c, session_id=session, now=now, trigger_event_id=trigger, model=model)
            for c in crossings
            if c.at_limit
            for session in c.sessions
        ]

    @staticmethod
    def _alerts_for(crossings: list[Crossing], now: datetime) -> list[tuple[bytes, bytes]]:
        out = []
        for c in crossings:
            if not c.at_limit:
                metrics.THRESHOLDS_CROSSED.inc()
                out.append((c.policy.policy_id.encode(), encode(make_alert(c, now=now))))
        return out

    async def prepare_scope_batch(self, events: Sequence[faust.EventT]) -> list[Any]:
        """Budgets wider than a session, from the usage records of every session's worker.

        Each scope value is one key of `scope-usage`, so one partition and one owner: its spend
        is exact however the sessions are spread. Records are read committed and written in the
        same transactions as the source offsets, so each counts once. A breach signals every
        session seen in the scope's window; a session first seen after it is signalled on its
        first record (the hook refuses its next call). The same limits are usually signalled
        earlier by `processors.scope_preview`, from the records before they commit.
        """
        now = self.now()
        outbox: Outbox = {}
        signals_sent = 0
        policies = self.policies.by_id
        progress: dict[int, int] = {}
        for ev in events:
            msg = ev.message
            progress[msg.partition] = max(msg.offset, progress.get(msg.partition, -1))
            parsed = parse_scope_record(msg.value)
            if parsed is None:
                log.error("bad scope-usage record at %s/%s, skipped", msg.partition, msg.offset)
                continue
            sval, items = parsed
            for item in items:
                try:
                    crossings = apply_scope_item(self.scope_book, policies, sval, item, msg.partition)
                except BAD_ITEM:
                    log.error("bad scope-usage item at %s/%s, skipped", msg.partition, msg.offset)
                    continue
                for signal in self._signals_for(crossings, item["e"], item.get("m"), now):
                    self.signals.publish(signal)
                    signals_sent += 1
                for alert_key, alert in self._alerts_for(crossings, now):
                    put(outbox, msg.partition, self.alerts_name, alert_key, alert, to_partition=None)
        if signals_sent:
            await asyncio.get_running_loop().run_in_executor(None, self.signals.flush)
        if self.preview is None:
            self._write_dirty(outbox, self.scope_book, self.scope_budgets, self.scope_changelog)
        else:
            with self.preview.lock:  # the preview never sees the new state without the progress
                self._write_dirty(outbox, self.scope_book, self.scope_budgets, self.scope_changelog)
                self.preview.handled(progress)
        return await self._append_outbox(outbox, self.scope_name)

    def _dead_letter(self, outbox: Outbox, msg: Any, rejection: Rejection, now: datetime) -> None:
        raw: bytes = msg.value or b""
        letter = DeadLetter(
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            reason=rejection.reason,
            error_code=rejection.code,
            payload=raw[:MAX_EVENT_BYTES].decode("utf-8", "replace"),
            failed_at=now,
        )
        put(outbox, msg.partition, self.dlq_name, msg.key, encode(letter))
        metrics.EVENTS_DEAD_LETTERED.labels(rejection.code).inc()

    async def _expire_dedupe(self) -> None:
        try:
            await self._expire_dedupe_once()
        except Exception:  # cleanup is best effort; the lookup ignores expired ids anyway
            log.exception("dedupe cleanup failed")

    async def _expire_dedupe_once(self) -> None:
        horizon = self.now().timestamp() - self.settings.dedupe_retention_s
        outbox: Outbox = {}
        for key, partition in cast(DedupeStore, self.dedupe.data).expire(horizon):
            put(outbox, partition, self.dedupe_changelog, key, None)
        await self._send_outbox(outbox, self.source_name)
