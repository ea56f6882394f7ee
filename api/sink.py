"""The sink: `priced-events` -> warehouse, exactly once in every report.

A batch (up to `sink_batch_rows` records or `sink_batch_seconds`) is inserted as one block,
its partitions one after another, with `insert_deduplication_token` naming the offsets it holds
(`block_token`: topic, and partition:first:last of each partition). Offsets are committed
synchronously only after the batch's inserts succeeded. After a crash between insert and commit
the records are read again from the committed offsets: the same records make the same block
under the same token and the engine drops it; should the batch come out different (more records
arrived, or the partitions interleaved otherwise), reports still count each event_id once (they
deduplicate in the query), and the ledger below keeps every rollup exact, so no total doubles.
One block per batch rather than one per partition: each block is a part in every table and
five statements, and parts are what the engine's merges spend their time on.

After each block lands in `priced_events`, its first-seen events go to `event_ledger`: the
block's event_ids are looked up in the ledger and only unseen ones (first occurrence within
the block) are inserted, each row carrying the insert's `ledger_token`. A duplicate arriving
later, in another batch at other offsets, is found and skipped. The sink then rolls the rows
of that token up into `rollup_hourly` and `rollup_daily` (one INSERT ... SELECT each, under a
deduplication token) and records the token in `ledger_rollups`. Each step is idempotent, so a
process killed anywhere in between is repaired by the replay: it finds the ledger rows that an
earlier attempt at the same offsets wrote and rolls up each of their tokens not yet recorded
(a rollup block that had landed is dropped by the engine as a repeat). Duplicates share the
session key, so one partition (one sink) sees them all.

A record shaped as the worker writes it (`fast_shape_ok`: the models' own field sets) becomes
its row straight from `orjson.loads`, values as they came (Decimals as the worker's strings,
datetimes as its ISO 8601 text), which the warehouse parses as it parses the model's values;
anything else goes through the pydantic model, which dead-letters it with its reason. Should
the warehouse refuse a block (a value it cannot store), the model checks the block's records
one by one: those it rejects are dead-lettered as above, the rest are inserted as the model
renders them under the block's token. That depends on the records only, so a replay of the
same offsets sends the same block.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import BaseModel, ValidationError

from agentledger import heap
from agentledger.kafka_admin import ensure_topics, wait_for_broker
from agentledger.settings import Settings
from api import metrics
from api.migrations import migrate
from api.queries import ROLLUP_TIME_KEYS, rollup_insert
from api.warehouse import Warehouse, WarehouseError, open_warehouse
from schemas import codec
from schemas.events import MAX_EVENT_BYTES, SCHEMA_VERSION, CostEvent, DeadLetter, PricedEvent, utcnow
from schemas.topics import COST_EVENTS_DLQ, PRICED_EVENTS, topic_name

log = structlog.get_logger(__name__)
T = TypeVar("T")

PRICED_EVENT_COLUMNS: tuple[str, ...] = (
    "event_id", "schema_version", "kind", "occurred_at", "received_at", "priced_at",
    "session_id", "thread_id", "workflow_id", "step", "step_name", "agent_type",
    "team", "project", "customer", "tags",
    "provider", "model", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "latency_ms", "streamed", "cache_hit",
    "tool_name", "duration_ms", "tool_fee", "error",
    "max_output_tokens", "estimated_cost", "settles", "reported_cost", "adjustment_amount", "reason",
    "cost", "list_cost", "input_cost", "output_cost", "currency", "price_source", "price_version",
    "unpriced", "late", "clamped",
    "kafka_topic", "kafka_partition", "kafka_offset",
)  # fmt: skip

LEDGER_COLUMNS: tuple[str, ...] = (
    "event_id", "kind", "occurred_at", "priced_at", "session_id", "workflow_id", "step", "step_name",
    "agent_type", "team", "project", "customer", "provider", "model", "tool_name",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "cost", "list_cost", "currency", "price_version", "unpriced", "kafka_topic", "kafka_partition", "kafka_offset",
)  # fmt: skip
_LEDGER_INDEX = tuple(PRICED_EVENT_COLUMNS.index(c) for c in LEDGER_COLUMNS)
_ledger_values = operator.itemgetter(*_LEDGER_INDEX)  # one C call per row, not a generator

_PRICE_FIELDS = ("cost", "list_cost", "input_cost", "output_cost", "currency", "price_source", "price_version",
                 "unpriced", "late", "clamped")  # fmt: skip
_KAFKA_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset")

Record = tuple[int, tuple[Any, ...], Message]
"""One accepted record of a partition: its offset, its `priced_events` row, and the message
(to check it again, and dead-letter it, should the warehouse refuse its block)."""


def field_shape(model: type[BaseModel]) -> tuple[frozenset[str], frozenset[str]]:
    """The field names of `model`, and those a record must carry to skip validation: the
    required ones and those whose default is not None. The worker's encoder leaves out None
    values only (`codec.encode`), so every record it writes carries all of the latter."""
    fields = model.model_fields
    if any(f.alias is not None or f.validation_alias is not None for f in fields.values()):
        raise TypeError(f"{model.__name__} has aliased fields: the sink's fast path reads fields by name")
    must = frozenset(
        name for name, f in fields.items() if f.is_required() or f.default is not None or f.default_factory is not None
    )
    return frozenset(fields), must


_PRICED_FIELDS, _PRICED_MUST = field_shape(PricedEvent)
_EVENT_FIELDS, _EVENT_MUST = field_shape(CostEvent)


def _event_columns() -> tuple[str, ...]:
    """PRICED_EVENT_COLUMNS but the Kafka ones, each checked to be a field of exactly one of
    the models: of the event (read from the `event` object) or of the priced record around it."""
    if PRICED_EVENT_COLUMNS[-3:] != _KAFKA_COLUMNS:
        raise TypeError("the Kafka columns must come last in PRICED_EVENT_COLUMNS")
    for column in PRICED_EVENT_COLUMNS[:-3]:
        if (column in _EVENT_FIELDS) == (column in _PRICED_FIELDS):
            raise TypeError(f"column {column!r} must be a field of exactly one of CostEvent and PricedEvent")
    return PRICED_EVENT_COLUMNS[:-3]


_RECORD_COLUMNS = _event_columns()

Shape = tuple[tuple[str, ...], tuple[str, ...]]
"""A record's keys and its event's keys, in the order they came."""
RowGetter = Callable[[list[Any]], tuple[Any, ...]]
"""Picks a record's row values (PRICED_EVENT_COLUMNS but the Kafka ones) out of
`[*event.values(), *record.values(), None]`, the None standing for every field left out."""

_GETTERS: dict[Shape, RowGetter | None] = {}
MAX_SHAPES = 1024
"""Shapes remembered. The worker writes a handful (one per event kind and set of None fields
left out); anything beyond this is checked again at each record, never remembered."""


def shape_getter(keys: tuple[str, ...], event_keys: tuple[str, ...]) -> RowGetter | None:
    """The row getter of records of this shape, or None when the shape does not pass: a key
    outside the models' fields, or a field that must be there missing (see `field_shape`)."""
    if not (_PRICED_MUST <= set(keys) <= _PRICED_FIELDS and _EVENT_MUST <= set(event_keys) <= _EVENT_FIELDS):
        return None
    left_out = len(event_keys) + len(keys)
    in_event = {name: i for i, name in enumerate(event_keys)}
    around = {name: len(event_keys) + i for i, name in enumerate(keys)}
    return operator.itemgetter(
        *((in_event if c in _EVENT_FIELDS else around).get(c, left_out) for c in _RECORD_COLUMNS)
    )


def row_getter(doc: Any) -> RowGetter | None:
    """How to make a decoded priced-events record a row without pydantic, or None when it must go
    through the model: a JSON object with an `event` object of schema version 1 and a shape that
    passes `shape_getter`. Values are not checked here: the worker validated them with the same
    models before writing them, and a value the warehouse cannot store makes it refuse the block,
    which is then checked record by record (`Sink._insert`). Shapes are remembered, so a record
    costs two tuples of its keys and a dict lookup (1.7 µs a record when its keys were compared
    as sets each time, bench/sink_breakdown.py)."""
    if type(doc) is not dict:
        return None
    event = doc.get("event")
    if type(event) is not dict:
        return None
    version = event.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        return None
    shape = (tuple(doc), tuple(event))
    try:
        return _GETTERS[shape]
    except KeyError:
        getter = shape_getter(*shape)
        if len(_GETTERS) < MAX_SHAPES:
            _GETTERS[shape] = getter
        return getter


def fast_shape_ok(doc: Any) -> bool:
    """Whether a decoded priced-events record can become a row without pydantic (`row_getter`)."""
    return row_getter(doc) is not None


def fast_row(
    doc: dict[str, Any], topic: str, partition: int, offset: int, getter: RowGetter | None = None
) -> tuple[Any, ...]:
    """The `priced_events` row of a record that passed `fast_shape_ok`, values as they came
    (Decimals as the worker's strings, datetimes as its ISO 8601 text): the warehouse parses
    them as `priced_event_row`'s values. A field left out is None."""
    if getter is None:
        getter = row_getter(doc)
        assert getter is not None, "fast_row of a record that did not pass fast_shape_ok"
    return (*getter([*doc["event"].values(), *doc.values(), None]), topic, partition, offset)


CRASH_EXIT_CODE = 75
"""The exit code of a sink crashed on purpose by `sink_fault_crash_file` (chaos tests)."""


class SinkError(Exception):
    """The sink cannot go on (a Kafka fatal error or a warehouse error that retrying cannot fix).
    Offsets of the failed batch are not committed: fix the cause and restart; nothing is lost."""


class InsertRefused(SinkError):
    """The warehouse refused a statement with an error that retrying cannot fix (data it cannot
    parse, a missing table). The sink checks a refused block record by record before it gives up."""


def priced_event_row(priced: PricedEvent, topic: str, partition: int, offset: int) -> tuple[Any, ...]:
    """One `priced_events` row, in PRICED_EVENT_COLUMNS order."""
    event = priced.event
    values: dict[str, Any] = event.model_dump(mode="python")
    values["kind"] = event.kind.value
    values["received_at"] = event.received_at
    values["priced_at"] = priced.priced_at
    for name in _PRICE_FIELDS:
        values[name] = getattr(priced, name)
    values["kafka_topic"] = topic
    values["kafka_partition"] = partition
    values["kafka_offset"] = offset
    return tuple(values[c] for c in PRICED_EVENT_COLUMNS)


def ledger_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The `event_ledger` row (LEDGER_COLUMNS order) of a `priced_events` row."""
    values: tuple[Any, ...] = _ledger_values(row)
    return values


def first_seen(rows: Sequence[tuple[Any, ...]], known: set[str]) -> list[tuple[Any, ...]]:
    """Ledger rows of the events in `rows` whose event_id is not in `known`, first occurrence only."""
    out = []
    seen = set(known)
    for row in rows:
        event_id = row[0]
        if event_id in seen:
            continue
        seen.add(event_id)
        out.append(ledger_row(row))
    return out


def dedup_token(topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    return f"{topic}:{partition}:{first_offset}:{last_offset}"


LEDGER_LOOKUP = (
    "SELECT event_id, ledger_token, kafka_topic, kafka_partition, kafka_offset "
    "FROM {db:Identifier}.event_ledger "
    "WHERE event_id IN (SELECT id FROM format(JSONCompactColumns, 'id String', {ids:String}))"
)
"""Which of a block's event ids the ledger has seen, and where (bench.ledger_lookup times it).
The ids travel as one JSONCompactColumns text (`lookup_ids`) that the engine parses as data; an
`Array(String)` parameter is parsed as SQL. CPU for 10,000 new ids: 24.7 ms on an empty ledger
and 30.5 ms at 200,000 rows that way, 6.1 and 12.4 ms this way."""


def lookup_ids(ids: Sequence[str]) -> str:
    """The `ids` parameter of LEDGER_LOOKUP: one JSON array in a JSON array, escaped by orjson."""
    return orjson.dumps([ids]).decode()


def ledger_token_of(token: str, fresh: Sequence[tuple[Any, ...]]) -> str:
    """The token of one ledger insert: its block's, and a digest of the events it writes.

    A replay that finds part of an earlier insert landed writes the rest under another token,
    never under one the engine would drop as a repeat."""
    digest = hashlib.sha256("\n".join(row[0] for row in fresh).encode()).hexdigest()[:16]
    return f"{token}:ledger:{digest}"


Span = tuple[int, int, int]
"""The records of one partition in a block: (partition, first offset, last offset)."""


def block_token(topic: str, spans: Sequence[Span]) -> str:
    """The deduplication token of a block holding `spans` (in partition order): the same
    records, and only they, give the same token. `topic:partition:first:last` for one
    partition, the spans one after another for several, a digest of them when that would
    be longer than a token may be."""
    token = f"{topic}:" + ":".join(f"{p}:{first}:{last}" for p, first, last in spans)
    if len(token) <= 200:
        return token
    return f"{topic}:{len(spans)}:{hashlib.sha256(token.encode()).hexdigest()[:32]}"


class Sink:
    def __init__(self, settings: Settings, warehouse: Warehouse) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.topic = topic_name(settings.topic_prefix, PRICED_EVENTS)
        self.dlq_topic = topic_name(settings.topic_prefix, COST_EVENTS_DLQ)
        self.rows_inserted = 0
        self.batches = 0
        self.dead_letters = 0
        self.duplicates_skipped = 0
        self.ledger_rows = 0
        self.rows_done = 0
        """Rows inserted whose ledger rows and rollups are written too: in every report."""
        self._pending: dict[int, list[Record]] = {}
        self._seen: dict[int, int] = {}
        self._dlq_errors: list[str] = []
        self._stop = threading.Event()
        self._last_lag = 0.0
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    # -- Kafka -----------------------------------------------------------------------------

    def _make_consumer(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": self.settings.sink_group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "client.id": "agentledger-sink",
            }
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish what was read from the partitions we are losing, so the new owner starts
        # after it; if that fails the records are simply read again by the new owner.
        try:
            self.flush()
        finally:
            for tp in partitions:
                self._pending.pop(tp.partition, None)
                self._seen.pop(tp.partition, None)

    def _dead_letter(self, msg: Message, reason: str, code: str) -> None:
        assert self._producer is not None
        payload = (msg.value() or b"")[:MAX_EVENT_BYTES].decode("utf-8", errors="replace")
        letter = DeadLetter(
            topic=msg.topic() or self.topic,
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            reason=reason[:4096],
            error_code=code,
            payload=payload,
            failed_at=utcnow(),
        )

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self._dlq_errors.append(str(err))

        self._producer.produce(self.dlq_topic, codec.encode(letter), key=msg.key(), on_delivery=delivered)
        self._producer.poll(0)
        self.dead_letters += 1
        metrics.SINK_DEAD_LETTERS.inc()

    def _validated(self, msg: Message) -> PricedEvent | None:
        """The record validated by the model, or None once it is on its way to the DLQ."""
        try:
            return codec.decode(PricedEvent, msg.value() or b"")
        except ValidationError as exc:
            malformed = any(e["type"] == "json_invalid" for e in exc.errors())
            self._dead_letter(msg, str(exc), "malformed_json" if malformed else "invalid_priced_event")
        except ValueError as exc:
            self._dead_letter(msg, str(exc), "malformed_json")
        return None

    def _accept(self, msg: Message) -> None:
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        topic = msg.topic() or self.topic
        try:
            doc = orjson.loads(msg.value() or b"")
        except orjson.JSONDecodeError:
            doc = None
        # The fast path skips pydantic: 9 µs a record instead of 28 (bench/sink_breakdown.py).
        # Anything not shaped as the worker writes takes the model's path, which names the fault.
        row: tuple[Any, ...] | None = None
        if (getter := row_getter(doc)) is not None:
            row = fast_row(doc, topic, partition, offset, getter)
        elif (priced := self._validated(msg)) is not None:
            row = priced_event_row(priced, topic, partition, offset)
        if row is not None:
            self._pending.setdefault(partition, []).append((offset, row, msg))
        self._seen[partition] = offset

    # -- warehouse ---------------------------------------------------------------------------

    def _with_retries(self, action: Callable[[], T]) -> T:
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                result = action()
            except WarehouseError as exc:
                if not exc.retryable:
                    raise InsertRefused(f"insert failed, not retryable: {exc}") from exc
                metrics.SINK_RETRIES.inc()
                log.warning("sink.insert_retry", error=str(exc), delay=delay)
                if self._stop.wait(delay):
                    raise SinkError("stopped while the warehouse was failing; batch not committed") from exc
                delay = min(delay * 2, 5.0)
                continue
            metrics.SINK_INSERT_SECONDS.observe(time.perf_counter() - started)
            return result

    def _insert_priced(self, rows: list[tuple[Any, ...]], token: str) -> None:
        database = self.settings.database
        self._with_retries(
            lambda: self.warehouse.insert(database, "priced_events", PRICED_EVENT_COLUMNS, rows, dedup_token=token)
        )

    def _recheck(self, block: list[Record]) -> list[tuple[Any, ...]]:
        """The rows of the block's records that the model accepts, rebuilt from the validated
        model; the others are dead-lettered with the model's reason."""
        rows = []
        for offset, row, msg in block:
            priced = self._validated(msg)
            if priced is not None:
                rows.append(priced_event_row(priced, row[-3], row[-2], offset))
        return rows

    def _insert(self, pending: Sequence[tuple[int, list[Record]]]) -> None:
        """Insert the batch's records, partition after partition, as one block."""
        spans = [(partition, records[0][0], records[-1][0]) for partition, records in pending if records]
        if not spans:
            return
        token = block_token(self.topic, spans)
        block = [record for _, records in pending for record in records]
        rows = [row for _, row, _ in block]
        try:
            self._insert_priced(rows, token)
        except InsertRefused as exc:
            # A value the warehouse cannot store (the fast path checks shape, not values): the
            # model finds the records at fault; the rest go in as the model renders them, under
            # the same token. The same records give the same rows, so a replay after a crash
            # sends the same block and the engine drops it. Refused again: not the data's fault.
            log.warning("sink.block_refused", spans=spans, error=str(exc)[:500])
            rows = self._recheck(block)
            if not rows:
                return
            self._insert_priced(rows, token)
        self.rows_inserted += len(rows)
        self.batches += 1
        metrics.SINK_ROWS.inc(len(rows))
        metrics.SINK_BATCHES.inc()
        tokens = self._with_retries(lambda: self._insert_ledger(rows, token, spans))
        for ledger_token in sorted(tokens):
            self._with_retries(functools.partial(self._roll_up, ledger_token))
        self.rows_done += len(rows)

    def _insert_ledger(self, rows: list[tuple[Any, ...]], token: str, spans: Sequence[Span]) -> set[str]:
        """Insert the block's first-seen events; the ledger tokens whose rollups may be missing."""
        ids = sorted({row[0] for row in rows})
        found = self.warehouse.query(LEDGER_LOOKUP, {"db": self.settings.database, "ids": lookup_ids(ids)})
        # rows an earlier attempt at these very offsets wrote: a replay after a crash
        offsets = {partition: (first, last) for partition, first, last in spans}
        replayed = {
            r["ledger_token"]
            for r in found
            if r["ledger_token"]
            and r["kafka_topic"] == self.topic
            and r["kafka_partition"] in offsets
            and offsets[r["kafka_partition"]][0] <= r["kafka_offset"] <= offsets[r["kafka_partition"]][1]
        }
        tokens = replayed - self._rolled_up(replayed)
        fresh = first_seen(rows, {r["event_id"] for r in found})
        skipped = len(rows) - len(fresh)
        if fresh:
            ledger_token = ledger_token_of(token, fresh)
            self.warehouse.insert(
                self.settings.database,
                "event_ledger",
                (*LEDGER_COLUMNS, "ledger_token"),
                [(*row, ledger_token) for row in fresh],
                dedup_token=ledger_token,
            )
            tokens.add(ledger_token)
        self.ledger_rows += len(fresh)
        self.duplicates_skipped += skipped
        metrics.SINK_DUPLICATES.inc(skipped)
        return tokens

    def _rolled_up(self, tokens: set[str]) -> set[str]:
        if not tokens:
            return set()
        rows = self.warehouse.query(
            "SELECT DISTINCT ledger_token FROM {db:Identifier}.ledger_rollups WHERE ledger_token IN {t:Array(String)}",
            {"db": self.settings.database, "t": sorted(tokens)},
        )
        return {r["ledger_token"] for r in rows}

    def _roll_up(self, ledger_token: str) -> None:
        database = self.settings.database
        for table in ROLLUP_TIME_KEYS:
            self.warehouse.command(*rollup_insert(database, table, ledger_token, dedup_token=f"{ledger_token}:{table}"))
        self.warehouse.insert(database, "ledger_rollups", ("ledger_token",), [(ledger_token,)])

    def _commit(self, offsets: list[TopicPartition]) -> None:
        assert self._consumer is not None
        self._consumer.commit(offsets=offsets, asynchronous=False)

    def flush(self) -> None:
        """Insert what is pending, make dead letters durable, then commit offsets."""
        if not self._seen:
            return
        self._insert(sorted(self._pending.items()))
        if self._producer is not None and self.dead_letters:
            remaining = self._producer.flush(30)
            if remaining or self._dlq_errors:
                raise SinkError(f"dead letters not delivered: {self._dlq_errors or remaining}")
        if self.settings.sink_fault_crash_file is not None and self.settings.sink_fault_crash_file.exists():
            log.warning("sink.fault_injected_crash", rows_inserted=self.rows_inserted)
            os._exit(CRASH_EXIT_CODE)
        self._commit([TopicPartition(self.topic, p, o + 1) for p, o in sorted(self._seen.items())])
        self._pending.clear()
        self._seen.clear()

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < 5 or self._consumer is None:
            return
        self._last_lag = now
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                if tp.offset < 0:
                    continue
                _low, high = self._consumer.get_watermark_offsets(tp, timeout=1, cached=False)
                metrics.SINK_LAG.labels(str(tp.partition)).set(max(high - tp.offset, 0))
        except KafkaException as exc:
            log.debug("sink.lag_unavailable", error=str(exc))

    # -- loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; on a clean stop the pending batch is flushed."""
        self._stop = stop
        while True:  # Kafka may come up after the API: wait, and stay stoppable meanwhile
            try:
                wait_for_broker(self.settings, give_up_after=10.0)
                break
            except KafkaException:
                if stop.is_set():
                    return
        ensure_topics(self.settings, (PRICED_EVENTS, COST_EVENTS_DLQ))
        self._consumer = self._make_consumer()
        self._producer = Producer(
            {"bootstrap.servers": self.settings.kafka_bootstrap, "acks": "all", "enable.idempotence": True}
        )
        self._consumer.subscribe([self.topic], on_revoke=self._on_revoke)
        # What is alive by now lives as long as the process (modules, models, the engine's
        # bindings): out of the collector's full passes, which a batch's rows set off every
        # few thousand allocations and which would walk it all each time; then fewer passes.
        heap.settle()
        batch_rows = self.settings.sink_batch_rows
        batch_started: float | None = None
        batch_read = 0
        try:
            while not stop.is_set():
                # a batch is one block (`_insert`): read no more than it may hold
                want = min(batch_rows - batch_read, 5000)
                messages = self._consumer.consume(num_messages=want, timeout=0.1)
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise SinkError(f"fatal Kafka error: {err}")
                        log.warning("sink.kafka_error", error=str(err))
                        continue
                    if batch_started is None:
                        batch_started = time.monotonic()
                    batch_read += 1
                    self._accept(msg)
                if batch_started is not None and (
                    batch_read >= batch_rows or time.monotonic() - batch_started >= self.settings.sink_batch_seconds
                ):
                    self.flush()
                    batch_started = None
                    batch_read = 0
                self._update_lag()
            self.flush()
        finally:
            # No commit here: after a failure the uncommitted records are read again. Forget
            # them first, or close() would flush them from the revoke callback.
            self._pending.clear()
            self._seen.clear()
            self._consumer.close()
            self._producer.flush(5)
            # released with the run, not with the Sink: a librdkafka client left alive goes on
            # trying its broker (and logging each refusal) long after it was used
            self._producer = None


def run_sink(settings: Settings) -> None:
    """The standalone sink process: migrate, consume until SIGINT/SIGTERM, stop cleanly.

    In embedded (chDB) mode use the API process instead, which runs the sink as a thread:
    a chDB folder can be opened by one process only."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("sink.stopping", signal=signum)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    warehouse = open_warehouse(settings)
    try:
        migrate(warehouse, settings.database)
        Sink(settings, warehouse).run(stop)
    finally:
        warehouse.close()
        for sig, old in previous.items():
            signal.signal(sig, old)
