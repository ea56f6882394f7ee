"""The process-wide state behind the public functions: one configured runtime or none.

`configure()` builds it; `atexit` flushes and closes it; after `fork()` the child builds
a fresh one (own queue, delivery thread, producer, spool file and listener) from the same
configuration, and never touches the parent's.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

from ingest.config import IngestConfig
from ingest.delivery import Delivery, encode_event
from ingest.signal_stream import SignalStream
from ingest.signals import SessionGuards, SignalListener
from ingest.stats import IngestStats, Stats

log = logging.getLogger("agentledger.ingest")


class Runtime:
    def __init__(self, config: IngestConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.guards = SessionGuards()
        self.delivery = Delivery(config, self.stats)
        self.listener: SignalListener | SignalStream | None = None
        if config.listen_signals:
            # with the HTTP transport the API relays the signals: this process may not reach Kafka
            listener = SignalStream if config.transport == "http" else SignalListener
            self.listener = listener(config, self.guards, self.stats)
        if self.listener is None:
            self.guards.ready.set()
        self._waited = False
        self.closed = False

    def submit(self, fields: dict[str, Any]) -> None:
        """Dev mode: validate here and raise; production: validate on the delivery thread."""
        if self.config.development:
            try:
                prepared = encode_event(fields)
            except Exception:
                self.stats.add("invalid")
                raise
            self.stats.add("recorded")
            self.delivery.submit(prepared)
        else:
            self.stats.add("recorded")
            self.delivery.submit(fields)

    def wait_ready(self) -> None:
        """Once per process: give the session-status snapshot a moment to load."""
        if self._waited:
            return
        self._waited = True
        if not self.guards.ready.wait(self.config.status_wait_s):
            log.warning("agentledger: session-status not loaded after %.1fs; going on", self.config.status_wait_s)

    def flush(self, timeout: float) -> bool:
        return self.delivery.flush(timeout)

    def close(self, timeout: float) -> bool:
        if self.closed:
            return True
        self.closed = True
        clean = self.delivery.close(timeout)
        if self.listener is not None:
            self.listener.close()
        return clean

    def snapshot(self) -> IngestStats:
        return self.stats.snapshot(pending=self.delivery.pending(), queued=self.delivery.queued())

    def abandon_after_fork(self) -> None:
        self.closed = True
        self.delivery.abandon_after_fork()


_lock = threading.Lock()
_runtime: Runtime | None = None
_rearm: IngestConfig | None = None
"""In a forked child: the parent's config, built into a runtime at first use."""
_hooks_installed = False
_ABANDONED: list[Runtime] = []
"""The parent's runtime, in a forked child: kept alive and unused. Freed, its Kafka clients'
destructors would call into librdkafka instances whose threads did not survive the fork (the
forked-child test hung once in 300 s in CI)."""


def peek() -> Runtime | None:
    """The runtime if one is running here, without re-arming a forked child."""
    return _runtime


def armed() -> bool:
    return _runtime is not None or _rearm is not None


def current() -> Runtime | None:
    if _runtime is None and _rearm is not None:
        return _rearm_in_child()
    return _runtime


def install(config: IngestConfig) -> Runtime:
    global _runtime, _rearm
    with _lock:
        _rearm = None
        _install_hooks()
        old, _runtime = _runtime, None
        if old is not None:
            old.close(config.exit_timeout_s)
        _runtime = Runtime(config)
        return _runtime


def uninstall(timeout: float) -> bool:
    global _runtime, _rearm
    with _lock:
        _rearm = None
        old, _runtime = _runtime, None
    return old.close(timeout) if old is not None else True


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    runtime = _runtime
    if runtime is None:
        return
    try:
        runtime.close(runtime.config.exit_timeout_s)
    except Exception:
        log.exception("agentledger: close at exit failed")


def _after_fork_in_child() -> None:
    """Forget the parent's runtime; the child builds its own when it first records.

    Lazily, so a child that never records (a worker pool, a `fork` before `exec`) starts
    no threads, opens no spool and connects to nothing.
    """
    global _runtime, _lock, _rearm
    _lock = threading.Lock()  # the parent's may have been held by another thread at fork time
    parent, _runtime = _runtime, None
    if parent is None:
        return
    parent.abandon_after_fork()
    _ABANDONED.append(parent)
    _rearm = parent.config


def _rearm_in_child() -> Runtime | None:
    global _runtime, _rearm
    with _lock:
        if _runtime is None and _rearm is not None:
            config, _rearm = _rearm, None
            try:
                _runtime = Runtime(config)
            except Exception:
                log.exception("agentledger: could not re-arm the hook after fork; recording is off here")
        return _runtime
