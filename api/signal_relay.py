"""Budget signals relayed to agents over HTTP: `GET /v1/signals/stream` (server-sent events).

An agent process that cannot reach Kafka (the hook's HTTP transport) follows one long-lived
stream instead of reading the `signals` topic itself. One relay per API process runs the
hook's own listener (ingest.signals.SignalListener: session-status snapshot, then signals, no
consumer group) over a fan-out that keeps the latest standing of every session that is not
active and hands each signal or status to every open stream as it arrives.

A stream starts with the snapshot (`event: status` per stopped, paused, downgraded or warned
session), then `event: ready` once the relay has read the whole session-status topic, then
`event: signal` / `event: status` as they come, with a `: ping` comment every
`PING_INTERVAL_S`. A client that cannot keep up (more than `QUEUE_SIZE` items behind) is cut
off and reconnects: it gets a fresh snapshot, so nothing it needs is lost.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from agentledger.settings import Settings
from api import metrics
from ingest.config import IngestConfig
from ingest.signals import SessionGuards, SignalListener
from ingest.stats import Stats
from schemas.budgets import SessionStatus, Signal
from schemas.codec import encode

log = structlog.get_logger(__name__)

PING_INTERVAL_S = 10.0
QUEUE_SIZE = 10_000
_CLOSED = b""


def sse(event: str, data: bytes) -> bytes:
    """One server-sent event; the payload is one line of JSON."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


@dataclass(eq=False, slots=True)
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[bytes]


def _offer(subscriber: _Subscriber, item: bytes) -> None:
    try:
        subscriber.queue.put_nowait(item)
    except asyncio.QueueFull:
        # too far behind: end its stream (it reconnects and reads a fresh snapshot)
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()
        subscriber.queue.put_nowait(_CLOSED)


class SignalFanout:
    """A `SignalTarget`: the standing of every session, and each change handed to every stream."""

    def __init__(self) -> None:
        self._guards = SessionGuards()
        self.ready = self._guards.ready
        self._subscribers: set[_Subscriber] = set()
        self._lock = threading.Lock()

    def _broadcast(self, item: bytes) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        if item:
            metrics.SIGNALS_RELAYED.inc(len(subscribers))
        for subscriber in subscribers:
            try:
                subscriber.loop.call_soon_threadsafe(_offer, subscriber, item)
            except RuntimeError:  # its loop is closed: the stream is gone
                self.unsubscribe(subscriber)

    def apply_signal(self, signal: Signal) -> None:
        self._guards.apply_signal(signal)
        self._broadcast(sse("signal", encode(signal)))

    def apply_status(self, status: SessionStatus) -> None:
        self._guards.apply_status(status)
        self._broadcast(sse("status", encode(status)))

    def forget(self, session_id: str) -> None:
        self._guards.forget(session_id)

    def subscribe(self) -> tuple[_Subscriber, list[SessionStatus]]:
        """A new stream's queue, and the snapshot it starts from (changes after it are queued)."""
        subscriber = _Subscriber(asyncio.get_running_loop(), asyncio.Queue(QUEUE_SIZE))
        with self._lock:
            self._subscribers.add(subscriber)
        metrics.SIGNAL_STREAMS.inc()
        return subscriber, self._guards.statuses()

    def unsubscribe(self, subscriber: _Subscriber) -> None:
        with self._lock:
            if subscriber not in self._subscribers:
                return
            self._subscribers.discard(subscriber)
        metrics.SIGNAL_STREAMS.dec()

    def close_all(self) -> None:
        self._broadcast(_CLOSED)

    @property
    def streams(self) -> int:
        return len(self._subscribers)


class SignalRelay:
    """The fan-out and the Kafka listener feeding it; started by the first stream, stopped with the app."""

    def __init__(self, settings: Settings) -> None:
        self.fanout = SignalFanout()
        config = IngestConfig(bootstrap_servers=settings.kafka_bootstrap, topic_prefix=settings.topic_prefix)
        self.stats = Stats()
        self._listener = SignalListener(config, self.fanout, self.stats)

    def close(self) -> None:
        self.fanout.close_all()
        self._listener.close()

    async def stream(self) -> AsyncIterator[bytes]:
        subscriber, snapshot = self.fanout.subscribe()
        try:
            for status in snapshot:
                yield sse("status", encode(status))
            ready_sent = False
            while True:
                if not ready_sent and self.fanout.ready.is_set():
                    ready_sent = True
                    yield sse("ready", b"{}")
                try:
                    # short waits until the snapshot is read, so `ready` follows it promptly
                    wait = PING_INTERVAL_S if ready_sent else 0.05
                    item = await asyncio.wait_for(subscriber.queue.get(), wait)
                except TimeoutError:
                    if ready_sent:
                        yield b": ping\n\n"
                    continue
                if not item:  # _CLOSED
                    return
                yield item
        finally:
            self.fanout.unsubscribe(subscriber)


def relay_of(state: object, settings: Settings, lock: threading.Lock) -> SignalRelay:
    """The app's relay, started on first use (an API that serves no stream reads no signals)."""
    with lock:
        relay: SignalRelay | None = getattr(state, "signal_relay", None)
        if relay is None:
            relay = SignalRelay(settings)
            state.signal_relay = relay  # type: ignore[attr-defined]
            log.info("signal_relay.started")
        return relay


def end_signal_streams(state: object) -> None:
    """End every open stream now (the server is stopping): they would otherwise hold its
    graceful shutdown open until its timeout. Clients reconnect elsewhere or later."""
    relay: SignalRelay | None = getattr(state, "signal_relay", None)
    if relay is not None:
        relay.fanout.close_all()
