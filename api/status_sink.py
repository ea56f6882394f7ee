"""The status sink: `signals`, `session-status`, `alerts` and `alert-deliveries` -> warehouse tables.

The same discipline as the priced-events sink (`api.sink`), for four small topics: per batch
each (topic, partition) is inserted as one block with `insert_deduplication_token =
topic:partition:first:last`, and offsets are committed only after every insert succeeded.
Each table is a ReplacingMergeTree keyed by what makes a row unique (session and signal id,
session id, alert id) and every query takes the latest version, so a replay never doubles.

A record that does not parse (or a session-status tombstone) is logged, counted and skipped:
these topics are written by our own processors, so a bad record is a bug to look at, not
user input to dead-letter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from pydantic import BaseModel, ValidationError

from agentledger.kafka_admin import ensure_topics
from agentledger.settings import Settings
from api.sink import SinkError, dedup_token
from api.warehouse import Warehouse, WarehouseError
from schemas import codec
from schemas.budgets import Alert, Scope, SessionStatus, Signal
from schemas.deliveries import AlertDelivery
from schemas.topics import ALERT_DELIVERIES, ALERTS, SESSION_STATUS, SIGNALS, TopicSpec, topic_name

log = structlog.get_logger(__name__)

SIGNAL_COLUMNS = (
    "session_id", "signal_id", "action", "policy_id", "scope", "scope_value", "window_start",
    "limit_tokens", "limit_cost", "spent_tokens", "spent_cost", "reason", "recommended_model",
    "trigger_event_id", "issued_at", "kafka_partition", "kafka_offset",
)  # fmt: skip
STATUS_COLUMNS = ("session_id", "state", "signal_id", "updated_at", "signal", "kafka_partition", "kafka_offset")
DELIVERY_COLUMNS = (
    "alert_id", "policy_id", "destination", "format", "attempt", "attempted_at", "ok", "final",
    "status_code", "error", "latency_ms", "next_attempt_at", "kafka_partition", "kafka_offset",
)  # fmt: skip
ALERT_COLUMNS = (
    "alert_id", "policy_id", "scope", "scope_value", "team", "window_start", "threshold",
    "spent_cost", "spent_tokens", "limit_cost", "limit_tokens", "top_sessions", "issued_at",
    "kafka_partition", "kafka_offset",
)  # fmt: skip


def signal_row(signal: Signal, partition: int, offset: int) -> tuple[Any, ...]:
    return (
        signal.session_id, signal.signal_id, signal.action.value, signal.policy_id,
        [s.value for s in signal.scope], signal.scope_value, signal.window_start,
        signal.limit_tokens, signal.limit_cost, signal.spent_tokens, signal.spent_cost, signal.reason,
        signal.recommended_model, signal.trigger_event_id, signal.issued_at, partition, offset,
    )  # fmt: skip


def status_row(status: SessionStatus, partition: int, offset: int) -> tuple[Any, ...]:
    signal = status.signal
    return (
        status.session_id,
        status.state.value,
        signal.signal_id if signal is not None else None,
        status.updated_at,
        codec.encode(signal).decode() if signal is not None else "",
        partition,
        offset,
    )


def scope_team(scope_value: str) -> str | None:
    """The team named in a scope value such as `team=t1|agent_type=x`, if any."""
    for part in scope_value.split("|"):
        name, sep, value = part.partition("=")
        if sep and name == Scope.TEAM.value:
            return value
    return None


def alert_row(alert: Alert, partition: int, offset: int) -> tuple[Any, ...]:
    team = scope_team(alert.scope_value) if Scope.TEAM in alert.scope else None
    top = orjson.dumps([s.model_dump(mode="json") for s in alert.top_sessions]).decode()
    return (
        alert.alert_id, alert.policy_id, [s.value for s in alert.scope], alert.scope_value, team,
        alert.window_start, alert.threshold, alert.spent_cost, alert.spent_tokens, alert.limit_cost,
        alert.limit_tokens, top, alert.issued_at, partition, offset,
    )  # fmt: skip


def delivery_row(delivery: AlertDelivery, partition: int, offset: int) -> tuple[Any, ...]:
    d = delivery
    return (
        d.alert_id, d.policy_id, d.destination, d.format, d.attempt, d.attempted_at, d.ok, d.final,
        d.status_code, d.error, d.latency_ms, d.next_attempt_at, partition, offset,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Route:
    spec: TopicSpec
    table: str
    model: type[BaseModel]
    columns: tuple[str, ...]
    convert: Callable[[Any, int, int], tuple[Any, ...]]


ROUTES: tuple[Route, ...] = (
    Route(SIGNALS, "signals", Signal, SIGNAL_COLUMNS, signal_row),
    Route(SESSION_STATUS, "session_status", SessionStatus, STATUS_COLUMNS, status_row),
    Route(ALERTS, "alerts", Alert, ALERT_COLUMNS, alert_row),
    Route(ALERT_DELIVERIES, "alert_deliveries", AlertDelivery, DELIVERY_COLUMNS, delivery_row),
)


class StatusSink:
    """Consumes the four topics in one consumer group (`<sink_group>-status`)."""

    def __init__(self, settings: Settings, warehouse: Warehouse) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.group = f"{settings.sink_group}-status"
        self._routes = {topic_name(settings.topic_prefix, r.spec): r for r in ROUTES}
        self._pending: dict[tuple[str, int], list[tuple[int, tuple[Any, ...]]]] = {}
        self._seen: dict[tuple[str, int], int] = {}
        self._consumer: Consumer | None = None
        self._stop = threading.Event()
        self.rows_inserted = 0
        self.skipped = 0

    def _accept(self, msg: Message) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        route = self._routes[topic]
        value = msg.value()
        self._seen[(topic, partition)] = offset
        if value is None:  # a tombstone on the compacted session-status topic
            self.skipped += 1
            return
        try:
            parsed = codec.decode(route.model, value)
        except (ValidationError, ValueError) as exc:
            self.skipped += 1
            log.error("status_sink.skipped", topic=topic, partition=partition, offset=offset, error=str(exc)[:500])
            return
        self._pending.setdefault((topic, partition), []).append((offset, route.convert(parsed, partition, offset)))

    def _insert(self, topic: str, partition: int, records: list[tuple[int, tuple[Any, ...]]]) -> None:
        route = self._routes[topic]
        table, columns = route.table, route.columns
        token = dedup_token(topic, partition, records[0][0], records[-1][0])
        delay = 0.1
        while True:
            try:
                self.warehouse.insert(
                    self.settings.database, table, columns, [r for _, r in records], dedup_token=token
                )
                break
            except WarehouseError as exc:
                if not exc.retryable:
                    raise SinkError(f"{table} insert failed, not retryable: {exc}") from exc
                if self._stop.wait(delay):
                    raise SinkError("stopped while the warehouse was failing; batch not committed") from exc
                delay = min(delay * 2, 5.0)
        self.rows_inserted += len(records)

    def flush(self) -> None:
        if not self._seen:
            return
        for (topic, partition), records in sorted(self._pending.items()):
            self._insert(topic, partition, records)
        assert self._consumer is not None
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in sorted(self._seen.items())]
        self._consumer.commit(offsets=offsets, asynchronous=False)
        self._pending.clear()
        self._seen.clear()

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self.flush()
        finally:
            for tp in partitions:
                self._pending.pop((tp.topic, tp.partition), None)
                self._seen.pop((tp.topic, tp.partition), None)

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; batches of up to a second, flushed before exit."""
        self._stop = stop
        ensure_topics(self.settings, tuple(r.spec for r in ROUTES))
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
                "client.id": "agentledger-status-sink",
            }
        )
        self._consumer.subscribe(sorted(self._routes), on_revoke=self._on_revoke)
        started: float | None = None
        try:
            while not stop.is_set():
                for msg in self._consumer.consume(num_messages=1000, timeout=0.1):
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise SinkError(f"fatal Kafka error: {err}")
                        continue
                    started = started or time.monotonic()
                    self._accept(msg)
                if started is not None and time.monotonic() - started >= self.settings.sink_batch_seconds:
                    self.flush()
                    started = None
            self.flush()
        except KafkaException as exc:
            raise SinkError(f"Kafka error: {exc}") from exc
        finally:
            self._pending.clear()
            self._seen.clear()
            self._consumer.close()


def run_status_sink(settings: Settings) -> None:
    """The standalone status sink (server mode): migrate, consume until SIGINT/SIGTERM.

    In embedded (chDB) mode the API process runs it as a thread instead."""
    import signal

    from api.migrations import migrate
    from api.warehouse import open_warehouse

    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("status_sink.stopping", signal=signum)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    warehouse = open_warehouse(settings)
    try:
        migrate(warehouse, settings.database)
        StatusSink(settings, warehouse).run(stop)
    finally:
        warehouse.close()
        for sig, old in previous.items():
            signal.signal(sig, old)
