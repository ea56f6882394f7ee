"""Counters of everything the hook did, readable with `ingest.stats()`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class IngestStats:
    """A snapshot of the hook's counters since `configure()` (or since fork, in a child)."""

    recorded: int = 0
    """Events accepted by `record_*`, `llm_call` and tool spans."""
    delivered: int = 0
    """Events acknowledged by Kafka (acks=all)."""
    spooled: int = 0
    """Events that had to wait in the disk spool: Kafka down or slow, or the queue full."""
    replayed: int = 0
    """Spooled events delivered later, including those left by an earlier process."""
    dropped: int = 0
    """Events lost on purpose: spool bound reached, or a permanent Kafka error. Logged."""
    invalid: int = 0
    """Events refused by validation or size (production mode; development mode raises)."""
    queue_full: int = 0
    """Events written to the spool by the agent thread because the in-memory queue was full."""
    spool_full: int = 0
    """Times the spool bound refused events (each event is also counted in `dropped`)."""
    pending: int = 0
    """Events in the spool not yet acknowledged by Kafka (a gauge)."""
    queued: int = 0
    """Events in the in-memory queue (a gauge)."""
    signals: int = 0
    """Signals and session statuses applied by the listener."""
    errors: int = 0
    """Unexpected internal errors, logged and swallowed."""


_COUNTERS = tuple(f.name for f in fields(IngestStats) if f.name not in ("pending", "queued"))


class Stats:
    """Thread-safe counters; agent threads and the delivery thread both add to them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(_COUNTERS, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def get(self, name: str) -> int:
        return self._values[name]

    def snapshot(self, *, pending: int = 0, queued: int = 0) -> IngestStats:
        with self._lock:
            return IngestStats(**self._values, pending=pending, queued=queued)
