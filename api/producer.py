"""The API's Kafka producer for HTTP ingest: same settings as the SDK hook's (idempotent,
acks=all, murmur2 by session id), and a way to await the broker's acks for one batch.

A daemon thread polls the producer; delivery callbacks resolve each batch's asyncio
future on the event loop that sent it. A batch answers only when every event is acked
(durable in Kafka) or when one failed or timed out.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from agentledger.settings import Settings
from schemas.topics import COST_EVENTS, topic_name

log = logging.getLogger("agentledger.api.producer")


class DeliveryFailed(Exception):
    """Kafka did not acknowledge every event of a batch in time (broker down or slow)."""


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        # murmur2 like the hook, the Java client and faust: a session lands on one partition
        # whoever produced its events.
        "partitioner": "murmur2_random",
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.timeout.ms": int(settings.ingest_delivery_timeout_s * 1000),
        "client.id": "agentledger-api-ingest",
        "logger": logging.getLogger("agentledger.api.kafka"),
    }


class _Batch:
    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.pending = count
        self.error: str | None = None
        self.lock = threading.Lock()

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        with self.lock:
            if err is not None and self.error is None:
                self.error = str(err)
            self.pending -= 1
            done = self.pending == 0
        if done:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(DeliveryFailed(self.error))
        else:
            self.future.set_result(None)


class EventProducer:
    """Created in the app's lifespan; `close()` flushes what is in flight."""

    def __init__(self, settings: Settings) -> None:
        self.topic = topic_name(settings.topic_prefix, COST_EVENTS)
        self._timeout_s = settings.ingest_delivery_timeout_s
        self._producer = Producer(producer_config(settings))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="agentledger-api-producer", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """Produce (key, value) pairs to cost-events and wait for every ack.

        Raises DeliveryFailed when one is refused or not acked within the delivery timeout."""
        if not messages:
            return
        batch = _Batch(asyncio.get_running_loop(), len(messages))
        sent = 0
        try:
            for key, value in messages:
                self._producer.produce(self.topic, value, key=key, on_delivery=batch.on_delivery)
                sent += 1
        except (BufferError, KafkaException) as exc:
            # the local queue is full (Kafka has been away a while): what was queued still
            # resolves through its callbacks; the rest never will
            with batch.lock:
                batch.pending -= len(messages) - sent
                batch.error = batch.error or f"producer queue refused the batch: {exc}"
                done = batch.pending == 0
            if done:
                batch.loop.call_soon_threadsafe(batch._resolve)
        # message.timeout.ms bounds every callback; the margin covers the poll interval
        try:
            await asyncio.wait_for(asyncio.shield(batch.future), timeout=self._timeout_s + 5)
        except TimeoutError:
            raise DeliveryFailed(f"no ack within {self._timeout_s + 5:.0f}s") from None

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        remaining = self._producer.flush(timeout_s)
        if remaining:
            log.error("api producer closed with %d event(s) not acknowledged", remaining)
