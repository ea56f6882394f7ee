"""From the agent thread to Kafka: bounded queue, write-ahead spool, one delivery thread.

The agent thread only appends a dict of fields to a deque (or, when the deque is full,
writes the event to the spool itself). The delivery thread validates and encodes, appends
each batch to the spool, hands spool rows to a confluent-kafka idempotent producer (at
most `max_in_flight` unacknowledged at a time), and deletes rows once Kafka acknowledges
them. While Kafka is down the producer holds its window (librdkafka retries it, without
duplicates, since `message.timeout.ms` is infinite) and everything else waits in the spool.

Sending is a `Sender`'s job: `KafkaSender` here, or `ingest.http_transport.HttpSender`
(POST /v1/events) with `transport="http"`. Queue, spool, flush and close are shared.
"""

from __future__ import annotations

import collections
import functools
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from ingest.config import IngestConfig
from ingest.errors import InvalidEvent
from ingest.kafka_log import kafka_logger
from ingest.spool import Spool, SpoolRow
from ingest.stats import Stats
from schemas.codec import encode
from schemas.events import MAX_EVENT_BYTES, CostEvent
from schemas.topics import COST_EVENTS, topic_name

log = logging.getLogger("agentledger.ingest")

Prepared = tuple[bytes, bytes]
"""(key, value) of an event that passed validation."""


def encode_event(fields: dict[str, Any]) -> Prepared:
    """Validate the fields as a `CostEvent` and encode them; raises `InvalidEvent`."""
    try:
        event = CostEvent(**fields)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid cost event: {exc}") from None
    except TypeError as exc:
        raise InvalidEvent(f"invalid cost event: {exc}") from None
    value = encode(event)
    if len(value) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"cost event is {len(value)} bytes, over the {MAX_EVENT_BYTES}-byte limit")
    return event.session_id.encode(), value


def describe_invalid(fields: dict[str, Any]) -> str:
    """Which fields failed, without their values (tags could hold anything)."""
    try:
        CostEvent(**fields)
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['type']}" for e in exc.errors())
    except Exception as exc:
        return type(exc).__name__
    return "oversize"


def producer_config(config: IngestConfig) -> dict[str, Any]:
    return {
        "bootstrap.servers": config.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        # murmur2 like the Java client and aiokafka (faust): the same key lands on the same
        # partition whoever produces it.
        "partitioner": "murmur2_random",
        "linger.ms": config.linger_ms,
        "message.timeout.ms": 0,
        "queue.buffering.max.messages": max(config.max_in_flight * 2, 1000),
        "compression.type": "lz4",
        "client.id": "agentledger-hook",
        "logger": kafka_logger(),
        **config.producer_config,
    }


class Sender(Protocol):
    """What the delivery thread needs from a transport: spool rows out, answers back.

    Every method runs on the delivery thread. A sender reads rows from the spool in order
    and deletes them once they are delivered (or refused for good), counting each in
    `stats`; rows it cannot deliver yet stay in the spool.
    """

    down: bool
    """The destination is unreachable: events recorded now will wait in the spool."""
    deadline: float | None
    """Set by `close()`: the monotonic time after which the sender must not block."""

    def pump(self) -> int:
        """Settle answers received, send more rows; how many rows were sent (0: nothing to do now)."""
        ...

    def in_flight(self) -> int:
        """Rows sent and not yet answered."""
        ...

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` for answers to rows in flight."""
        ...

    def shutdown(self) -> None:
        """Stop sending; rows not delivered stay in the spool."""
        ...

    def abandon_after_fork(self) -> None:
        """In a forked child: forget the parent's connections without closing them."""
        ...


_ABANDONED_PRODUCERS: list[Any] = []
"""The parent's producers, in a forked child (`KafkaSender.abandon_after_fork`)."""


class KafkaSender:
    """Spool rows to a confluent-kafka idempotent producer, `max_in_flight` at a time."""

    def __init__(self, config: IngestConfig, stats: Stats, spool: Spool) -> None:
        self.config = config
        self.stats = stats
        self.spool = spool
        self.down = False
        self.deadline: float | None = None
        self._cursor = 0
        """Highest spool id handed to the producer (in order)."""
        self._in_flight: dict[int, tuple[bool, int]] = {}
        """spool id -> (counts as replayed, value length)."""
        self._acked: list[int] = []
        self._retry: list[int] = []
        self._failed: list[tuple[int, str]] = []
        self._fatal = False
        self._producer: Any = None

    def pump(self) -> int:
        if self._producer is None:
            self._producer = self._make_producer()
        self._producer.poll(0)
        self._settle_acks()
        if self._fatal:
            self._rebuild()
        return self._produce()

    def in_flight(self) -> int:
        return len(self._in_flight)

    def wait(self, timeout: float) -> None:
        if self._producer is not None:
            self._producer.poll(timeout)

    def shutdown(self) -> None:
        self._shutdown_producer()

    def abandon_after_fork(self) -> None:
        # kept, never freed: its destructor would run librdkafka's on an instance whose threads
        # (and the locks they held) did not survive the fork, which can hang the child
        if self._producer is not None:
            _ABANDONED_PRODUCERS.append(self._producer)
        self._producer = None

    def _make_producer(self) -> Any:
        from confluent_kafka import Producer

        return Producer({**producer_config(self.config), "error_cb": self._on_error})

    def _on_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        if err.fatal():
            self._fatal = True
            log.error("agentledger: fatal producer error, rebuilding the producer: %s", err)
        elif err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if not self.down:
                log.warning("agentledger: Kafka unreachable, spooling events to %s", self.spool.path)
                self._mark_waiting()
            self.down = True

    def _mark_waiting(self) -> None:
        """Events in flight when Kafka goes away will wait: count them as spooled."""
        waiting = [row_id for row_id, (waited, _) in self._in_flight.items() if not waited]
        for row_id in waiting:
            self._in_flight[row_id] = (True, self._in_flight[row_id][1])
        if waiting:
            self.stats.add("spooled", len(waiting))

    def _on_delivery(self, row_id: int, err: Any, _msg: Any) -> None:
        if err is None:
            self._acked.append(row_id)
        elif err.retriable() or err.code() < 0:
            # local errors (timeouts, purges) and retriable broker errors: send again
            self._retry.append(row_id)
        else:
            self._failed.append((row_id, str(err)))

    def _settle_acks(self) -> None:
        if self._acked:
            acked, self._acked = self._acked, []
            replayed = size = 0
            for row_id in acked:
                was_spooled, length = self._in_flight.pop(row_id, (False, 0))
                replayed += was_spooled
                size += length
            self.spool.delete(acked, size)
            self.stats.add("delivered", len(acked))
            if replayed:
                self.stats.add("replayed", replayed)
            if self.down:
                log.warning("agentledger: Kafka reachable again, replaying the spool")
            self.down = False
        if self._failed:
            failed, self._failed = self._failed, []
            size = 0
            for row_id, _ in failed:
                size += self._in_flight.pop(row_id, (False, 0))[1]
            self.spool.delete([row_id for row_id, _ in failed], size)
            self.stats.add("dropped", len(failed))
            log.error("agentledger: Kafka refused %d events for good: %s", len(failed), failed[0][1])

    def _produce(self) -> int:
        room = self.config.max_in_flight - len(self._in_flight)
        if room <= 0:
            return 0
        rows: list[SpoolRow] = []
        waited: dict[int, bool] = {}
        if self._retry:
            retry, self._retry = self._retry, []
            for row_id in retry:
                waited[row_id] = self._in_flight.pop(row_id, (True, 0))[0]
            rows = self.spool.read_ids(sorted(retry))
            room -= len(rows)
        if room > 0 and self.spool.count > len(self._in_flight) + len(rows):
            rows.extend(self.spool.read_after(self._cursor, min(room, 5000)))
        sent = 0
        for row in rows:
            try:
                self._producer.produce(
                    row.topic, row.value, row.key, on_delivery=functools.partial(self._on_delivery, row.id)
                )
            except BufferError:
                self._retry.append(row.id)
                self._in_flight[row.id] = (True, len(row.value))
                continue
            replay = row.waited or row.id <= self.spool.inherited_upto or waited.get(row.id, False)
            self._in_flight[row.id] = (replay, len(row.value))
            self._cursor = max(self._cursor, row.id)
            sent += 1
        return sent

    def _rebuild(self) -> None:
        self._fatal = False
        self._shutdown_producer()
        self._in_flight.clear()
        self._acked.clear()
        self._retry.clear()
        self._cursor = 0
        self._producer = self._make_producer()

    def _shutdown_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.poll(0)
        except Exception:
            log.debug("agentledger: purge failed", exc_info=True)
        self._settle_acks()


def make_sender(config: IngestConfig, stats: Stats, spool: Spool) -> Sender:
    if config.transport == "http":
        from ingest.http_transport import HttpSender

        return HttpSender(config, stats, spool)
    return KafkaSender(config, stats, spool)


class Delivery:
    """The queue, the spool and the delivery thread of one configured process."""

    def __init__(self, config: IngestConfig, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        self.topic = topic_name(config.topic_prefix, COST_EVENTS)
        try:
            self.spool = Spool(config.spool_dir, max_events=config.spool_max_events, max_bytes=config.spool_max_bytes)
        except OSError as exc:
            # a spool that lasts this process only beats no spool; the agent must not fail
            fallback = Path(tempfile.mkdtemp(prefix="agentledger-spool-"))
            log.error("agentledger: cannot use spool folder %s (%s); using %s", config.spool_dir, exc, fallback)
            self.spool = Spool(fallback, max_events=config.spool_max_events, max_bytes=config.spool_max_bytes)
        self._queue: collections.deque[dict[str, Any] | Prepared] = collections.deque()
        self._wake = threading.Event()
        self._sleeping = False
        self._stop = threading.Event()
        self._hard_deadline: float | None = None
        self._in_hand = 0
        """Events taken off the queue and not yet in the spool."""
        self._idle = threading.Event()
        self._sender = make_sender(config, stats, self.spool)
        self._thread = threading.Thread(target=self._run, name="agentledger-delivery", daemon=True)
        self._thread.start()

    # -- agent thread ------------------------------------------------------------------

    def submit(self, item: dict[str, Any] | Prepared) -> None:
        """Hand an event over; never blocks on the network."""
        if len(self._queue) >= self.config.queue_size:
            self._overflow(item)
            return
        self._idle.clear()
        self._queue.append(item)
        if self._sleeping:
            self._wake.set()

    def _overflow(self, item: dict[str, Any] | Prepared) -> None:
        prepared = self._prepare(item)
        if prepared is None:
            return
        self.stats.add("queue_full")
        self.stats.add("spooled")
        self._idle.clear()
        self._store([prepared], waited=True)
        if self._sleeping:
            self._wake.set()

    # -- either thread ---------------------------------------------------------------

    def _prepare(self, item: dict[str, Any] | Prepared) -> Prepared | None:
        if isinstance(item, tuple):
            return item
        try:
            return encode_event(item)
        except InvalidEvent:
            self.stats.add("invalid")
            log.error("agentledger: invalid cost event dropped (%s)", describe_invalid(item))
            return None

    def _store(self, prepared: list[Prepared], *, waited: bool) -> None:
        stored = self.spool.append([(self.topic, key, value, waited) for key, value in prepared])
        if stored < len(prepared):
            lost = len(prepared) - stored
            self.stats.add("spool_full")
            self.stats.add("dropped", lost)
            log.error(
                "agentledger: spool full (%d events, %d bytes; bounds %d events, %d bytes): %d events dropped",
                self.spool.count,
                self.spool.bytes,
                self.spool.max_events,
                self.spool.max_bytes,
                lost,
            )

    # -- delivery thread -------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                self._loop()
                return
            except Exception:
                self.stats.add("errors")
                log.exception("agentledger: delivery failed; retrying in %.1fs (events are kept)", backoff)
                if self._stop.wait(backoff) and self._hard_deadline and time.monotonic() >= self._hard_deadline:
                    return
                backoff = min(backoff * 2, 30.0)

    def _loop(self) -> None:
        while True:
            moved = self._drain_queue()
            sent = self._sender.pump()
            if self._stop.is_set():
                done = not self._queue and not self._sender.in_flight() and self.spool.count == 0
                if done or (self._hard_deadline is not None and time.monotonic() >= self._hard_deadline):
                    self._sender.shutdown()
                    return
            if moved or sent:
                continue
            if not self._queue and not self._sender.in_flight() and self.spool.count == 0:
                self._idle.set()
            if self._sender.in_flight():
                self._sender.wait(0.005)
            else:
                self._sleeping = True
                if not self._queue:
                    self._wake.wait(0.05 if self.spool.count == 0 else 0.2)
                self._wake.clear()
                self._sleeping = False

    def _drain_queue(self) -> int:
        batch: list[Prepared] = []
        popleft = self._queue.popleft
        while len(batch) < 5000:
            try:
                item = popleft()
            except IndexError:
                break
            self._in_hand += 1
            prepared = self._prepare(item)
            if prepared is not None:
                batch.append(prepared)
        if batch:
            # behind a backlog or with Kafka down, these events will wait: count them as spooled
            waited = self._sender.down or self.spool.count > self._sender.in_flight()
            try:
                self._store(batch, waited=waited)
            except Exception:
                # disk trouble: keep the batch in memory, at the head of the queue, and retry
                self._queue.extendleft(reversed(batch))
                self._in_hand = 0
                raise
            if waited:
                self.stats.add("spooled", len(batch))
        self._in_hand = 0
        return len(batch)

    # -- control ---------------------------------------------------------------------

    def pending(self) -> int:
        return len(self._queue) + self._in_hand + self.spool.count

    def queued(self) -> int:
        return len(self._queue)

    def unspooled(self) -> int:
        """Events accepted and not yet in the spool: queued, or taken off the queue and in hand."""
        return len(self._queue) + self._in_hand

    def flush(self, timeout: float) -> bool:
        """Wait until every accepted event is acknowledged by Kafka; False on timeout."""
        deadline = time.monotonic() + max(timeout, 0.0)
        self._wake.set()
        while True:
            if not self._queue and not self._in_hand and self.spool.count == 0 and not self._sender.in_flight():
                return True
            if not self._thread.is_alive():
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._idle.wait(min(remaining, 0.01))

    def close(self, timeout: float) -> bool:
        """Deliver what can be delivered within `timeout`; the rest stays in the spool."""
        self._hard_deadline = time.monotonic() + max(timeout, 0.0)
        self._sender.deadline = self._hard_deadline
        self._stop.set()
        self._wake.set()
        self._thread.join(max(timeout, 0.0) + 5.0)
        clean = self.spool.count == 0 and not self._queue
        if self._queue:
            # the thread is gone; keep what is left on disk for the next process
            rest = [p for p in (self._prepare(self._queue.popleft()) for _ in range(len(self._queue))) if p]
            self._store(rest, waited=True)
        if not self._thread.is_alive():
            self.spool.close()
        return clean

    def abandon_after_fork(self) -> None:
        """In a forked child: drop the parent's queue, thread, producer and spool handle."""
        self._queue.clear()
        self._sender.abandon_after_fork()
        self.spool.abandon_after_fork()
