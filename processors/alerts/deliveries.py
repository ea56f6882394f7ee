"""The durable record of delivery attempts: the `alert-deliveries` topic, written and read back.

At start-up, and whenever the dispatcher is assigned partitions of `alerts`, the log reads the
topic up to its end, so an alert that any dispatcher already delivered to a destination is
never sent there again: not after a restart, a rebalance, or a duplicate alert event. The
dispatcher flushes its records before it commits an alert's offset.
"""

from __future__ import annotations

import time
import uuid
from typing import Protocol

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import ValidationError

from agentledger.settings import Settings
from processors.alerts.errors import DeliveryLogError
from schemas import codec
from schemas.deliveries import AlertDelivery
from schemas.topics import ALERT_DELIVERIES

log = structlog.get_logger(__name__)


class DeliveryRecorder(Protocol):
    def delivered(self, alert_id: str, destination: str) -> bool: ...

    def last_attempt(self, alert_id: str, destination: str) -> int: ...

    def record(self, delivery: AlertDelivery) -> None: ...


class MemoryDeliveries:
    """What a log knows: successful (alert, destination) pairs and the last attempt number of each."""

    def __init__(self) -> None:
        self._delivered: set[tuple[str, str]] = set()
        self._attempts: dict[tuple[str, str], int] = {}
        self.records: list[AlertDelivery] = []

    def delivered(self, alert_id: str, destination: str) -> bool:
        return (alert_id, destination) in self._delivered

    def last_attempt(self, alert_id: str, destination: str) -> int:
        return self._attempts.get((alert_id, destination), 0)

    def learn(self, delivery: AlertDelivery) -> None:
        key = (delivery.alert_id, delivery.destination)
        if delivery.ok:
            self._delivered.add(key)
        self._attempts[key] = max(self._attempts.get(key, 0), delivery.attempt)

    def record(self, delivery: AlertDelivery) -> None:
        self.learn(delivery)
        self.records.append(delivery)


class KafkaDeliveryLog(MemoryDeliveries):
    """Records go to `alert-deliveries` (key: alert id); `catch_up` reads the topic to its end."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.topic = settings.topic(ALERT_DELIVERIES.suffix)
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 0,
                "client.id": "agentledger-alert-dispatcher",
            }
        )
        # No group: partitions are assigned by hand and nothing is ever committed.
        self._reader = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"unused-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 50,
            }
        )
        self._assigned: list[TopicPartition] = []
        self._errors: list[str] = []
        self.read = 0

    def _partitions(self, timeout: float) -> list[TopicPartition]:
        metadata = self._reader.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            raise DeliveryLogError(f"cannot read topic {self.topic}: {metadata.error if metadata else 'missing'}")
        return [TopicPartition(self.topic, p) for p in sorted(metadata.partitions)]

    def catch_up(self, timeout: float = 60.0) -> None:
        """Read every record up to the end offsets the topic has now."""
        deadline = time.monotonic() + timeout
        try:
            partitions = self._partitions(timeout)
            if [tp.partition for tp in partitions] != [tp.partition for tp in self._assigned]:
                # First call, or the topic grew: (re)read everything; learning a record twice is harmless.
                self._assigned = [TopicPartition(self.topic, tp.partition, OFFSET_BEGINNING) for tp in partitions]
                self._reader.assign(self._assigned)
            marks = {tp.partition: self._reader.get_watermark_offsets(tp, timeout=timeout) for tp in partitions}
            while True:
                positions = {tp.partition: tp.offset for tp in self._reader.position(partitions)}
                # A position below zero means nothing fetched yet on that partition.
                behind = [p for p, (low, high) in marks.items() if high > low and positions.get(p, -1) < high]
                if not behind:
                    return
                if time.monotonic() > deadline:
                    raise DeliveryLogError(f"reading {self.topic} back took over {timeout:.0f} s")
                for msg in self._reader.consume(num_messages=1000, timeout=0.2):
                    self._take(msg)
        except KafkaException as exc:
            raise DeliveryLogError(f"cannot read {self.topic} back: {exc}") from exc

    def _take(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal() or err.code() not in (KafkaError._PARTITION_EOF,):
                log.warning("alert_deliveries.read_error", error=str(err))
            return
        value = msg.value()
        if value is None:
            return
        try:
            self.learn(codec.decode(AlertDelivery, value))
            self.read += 1
        except (ValidationError, ValueError) as exc:
            log.error("alert_deliveries.unreadable", partition=msg.partition(), offset=msg.offset(), error=str(exc))

    def record(self, delivery: AlertDelivery) -> None:
        super().record(delivery)

        def on_delivery(err: object, _msg: object) -> None:
            if err is not None:
                self._errors.append(str(err))

        try:
            self._producer.produce(
                self.topic, key=delivery.alert_id.encode(), value=codec.encode(delivery), on_delivery=on_delivery
            )
        except (KafkaException, BufferError) as exc:
            raise DeliveryLogError(f"cannot record a delivery of {delivery.alert_id}: {exc}") from exc
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every record is written; raise if any was not."""
        remaining = self._producer.flush(timeout)
        if remaining or self._errors:
            errors, self._errors = self._errors, []
            raise DeliveryLogError(f"{remaining} delivery record(s) unflushed; errors: {errors[:5]}")

    def close(self) -> None:
        try:
            self._producer.flush(10)
        finally:
            self._reader.close()
