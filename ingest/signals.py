"""Budget signals for this process's sessions: an in-memory standing per session, kept
current by a background Kafka consumer (or, with the HTTP transport, by the API's signal
stream: ingest/signal_stream.py).

The listener joins no consumer group and commits nothing. At start it notes the end offsets
of `signals`, reads the compacted `session-status` topic from the beginning (so a session
killed before this process started is known), and reads `signals` from the noted offsets
on. Only sessions whose state is not `active` are kept in memory. The API's signal relay
runs the same listener over a target of its own (api/signal_relay.py).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ingest.config import IngestConfig
from ingest.kafka_log import kafka_logger
from ingest.stats import Stats
from schemas.budgets import Action, Scope, SessionState, SessionStatus, Signal, scope_value_of
from schemas.codec import decode
from schemas.topics import SESSION_STATUS, SIGNALS, topic_name

log = logging.getLogger("agentledger.ingest")

_STATE_OF_ACTION = {
    Action.WARN: SessionState.WARNED,
    Action.DOWNGRADE: SessionState.DOWNGRADED,
    Action.PAUSE: SessionState.PAUSED,
    Action.KILL: SessionState.KILLED,
}
_RANK = {state: rank for rank, state in enumerate(SessionState)}


@dataclass(slots=True)
class Standing:
    """What this process knows about one session."""

    state: SessionState
    as_of: datetime
    signal: Signal | None = None
    """The signal behind the current state, if known."""
    recommended_model: str | None = None
    warnings: deque[Signal] = field(default_factory=lambda: deque(maxlen=64))
    """Warn signals not yet handed to the `on_warn` callback (the latest 64)."""


class SessionGuards:
    """session_id -> Standing, written by the listener thread, read by agent threads."""

    def __init__(self) -> None:
        self._standing: dict[str, Standing] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.ready = threading.Event()
        """Set once the session-status snapshot has been read."""
        self._breached: dict[tuple[str, str], Signal] = {}
        """(policy id, scope value) -> the kill or pause of a budget wider than a session."""

    def get(self, session_id: str) -> Standing | None:
        return self._standing.get(session_id)

    def _note_scope(self, signal: Signal) -> None:
        if Scope.SESSION in signal.scope or signal.action not in (Action.KILL, Action.PAUSE):
            return
        key = (signal.policy_id, signal.scope_value)
        known = self._breached.get(key)
        if known is None or (signal.window_end or signal.issued_at) >= (known.window_end or known.issued_at):
            self._breached[key] = signal

    def scope_breach(self, attribution: Mapping[Scope, str | None], now: datetime) -> Signal | None:
        """The kill or pause of a team (agent type, ...) budget that covers a session with this
        attribution, if one is in force: a session that starts in a breached scope is refused
        at its first call, before it spends."""
        if not self._breached:
            return None
        with self._lock:
            for key, signal in list(self._breached.items()):
                if signal.window_end is not None and now >= signal.window_end:
                    del self._breached[key]  # the window moved on: the next event decides again
                    continue
                if any(attribution.get(dim) != value for dim, value in signal.match.items()):
                    continue
                if scope_value_of(signal.scope, attribution) == signal.scope_value:
                    return signal
        return None

    def apply_signal(self, signal: Signal) -> None:
        """Signals only raise a session's state; only a newer status can lower it."""
        with self._lock:
            if signal.signal_id in self._seen:
                return
            if len(self._seen) > 100_000:
                self._seen.clear()
            self._seen.add(signal.signal_id)
            self._note_scope(signal)
            new_state = _STATE_OF_ACTION[signal.action]
            current = self._standing.get(signal.session_id)
            if current is None:
                current = Standing(SessionState.ACTIVE, signal.issued_at)
            if _RANK[new_state] >= _RANK[current.state]:
                current.state = new_state
                current.signal = signal
                current.as_of = max(current.as_of, signal.issued_at)
            if signal.action is Action.DOWNGRADE and signal.recommended_model:
                current.recommended_model = signal.recommended_model
            if signal.action is Action.WARN:
                current.warnings.append(signal)
            self._standing[signal.session_id] = current

    def apply_status(self, status: SessionStatus) -> None:
        with self._lock:
            if status.signal is not None:
                self._note_scope(status.signal)
            current = self._standing.get(status.session_id)
            if current is not None and status.updated_at < current.as_of:
                return  # older than a signal already applied
            if status.state is SessionState.ACTIVE:
                self._standing.pop(status.session_id, None)
                return
            standing = Standing(status.state, status.updated_at, status.signal)
            if status.signal is not None and status.signal.recommended_model:
                standing.recommended_model = status.signal.recommended_model
            if current is not None:
                standing.warnings = current.warnings
            self._standing[status.session_id] = standing

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._standing.pop(session_id, None)

    def statuses(self) -> list[SessionStatus]:
        """Every session known not to be active, as its latest status."""
        with self._lock:
            return [
                SessionStatus(session_id=sid, state=s.state, signal=s.signal, updated_at=s.as_of)
                for sid, s in self._standing.items()
            ]


class SignalTarget(Protocol):
    """What a signal listener feeds: `SessionGuards` in the hook, the relay's fan-out in the API."""

    ready: threading.Event

    def apply_signal(self, signal: Signal) -> None: ...

    def apply_status(self, status: SessionStatus) -> None: ...

    def forget(self, session_id: str) -> None: ...


class SignalListener:
    """The background consumer that feeds a `SignalTarget`."""

    def __init__(self, config: IngestConfig, guards: SignalTarget, stats: Stats) -> None:
        self.config = config
        self.guards = guards
        self.stats = stats
        self.signals_topic = topic_name(config.topic_prefix, SIGNALS)
        self.status_topic = topic_name(config.topic_prefix, SESSION_STATUS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentledger-signals", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _consumer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.config.bootstrap_servers,
            "group.id": f"agentledger-hook-{uuid.uuid4().hex}",  # never joined: partitions are assigned
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # the signal path: answer fetches fast, and do not wait for transaction ends
            "fetch.wait.max.ms": 10,
            "fetch.error.backoff.ms": 50,
            "isolation.level": "read_uncommitted",
            "socket.nagle.disable": True,
            "client.id": "agentledger-hook-signals",
            "logger": kafka_logger(),
            **self.config.consumer_config,
        }

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                return
            except Exception as exc:
                self.stats.add("errors")
                # warn once per outage, not once per retry
                level = logging.WARNING if backoff == 0.5 else logging.DEBUG
                log.log(level, "agentledger: signal listener cannot read signals (%s); retrying", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _listen(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(self._consumer_config())
        try:
            metadata = consumer.list_topics(timeout=5.0)
            missing = [t for t in (self.signals_topic, self.status_topic) if t not in metadata.topics]
            if missing:
                raise RuntimeError(f"topics not found: {missing}")
            signal_parts = sorted(metadata.topics[self.signals_topic].partitions)
            status_parts = sorted(metadata.topics[self.status_topic].partitions)
            assignment = []
            for p in signal_parts:
                _, high = consumer.get_watermark_offsets(TopicPartition(self.signals_topic, p), timeout=5.0)
                assignment.append(TopicPartition(self.signals_topic, p, high))
            snapshot_end: dict[int, int] = {}
            for p in status_parts:
                low, high = consumer.get_watermark_offsets(TopicPartition(self.status_topic, p), timeout=5.0)
                if high > low:
                    snapshot_end[p] = high
                assignment.append(TopicPartition(self.status_topic, p, OFFSET_BEGINNING))
            consumer.assign(assignment)
            if not snapshot_end:
                self.guards.ready.set()
            while not self._stop.is_set():
                # poll returns as soon as one message is there (consume(n, t) would wait out t
                # unless n arrive); then take whatever else is buffered, without waiting
                first = consumer.poll(0.1)
                if first is not None:
                    self._handle(first)
                    for message in consumer.consume(500, timeout=0):
                        self._handle(message)
                if snapshot_end and not self.guards.ready.is_set():
                    positions = consumer.position([TopicPartition(self.status_topic, p) for p in snapshot_end])
                    if all(tp.offset >= snapshot_end[tp.partition] for tp in positions):
                        self.guards.ready.set()
        finally:
            consumer.close()

    def _handle(self, message: Any) -> None:
        if message.error() is not None:
            if message.error().code() != -191:  # _PARTITION_EOF
                log.warning("agentledger: signal listener: %s", message.error())
            return
        try:
            if message.topic() == self.signals_topic:
                self.guards.apply_signal(decode(Signal, message.value()))
            elif message.value() is None:
                if message.key():
                    self.guards.forget(message.key().decode())
            else:
                self.guards.apply_status(decode(SessionStatus, message.value()))
            self.stats.add("signals")
        except Exception as exc:
            self.stats.add("errors")
            log.warning("agentledger: unreadable message on %s: %s", message.topic(), type(exc).__name__)
