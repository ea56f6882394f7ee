"""Background services of the admin endpoints, owned by the app's lifespan.

- the budget-policy cache (`api.policy_cache`), started on the first budgets request so
  that an API without budget traffic opens no extra consumer;
- with the embedded sink, the status sink (`api.status_sink`): signals, session statuses
  and alerts into the warehouse, as a thread of the API process.
"""

from __future__ import annotations

import threading

import structlog

from agentledger.settings import Settings
from api.policy_cache import PolicyCache
from api.status_sink import StatusSink
from api.warehouse import Warehouse

log = structlog.get_logger(__name__)


class AdminServices:
    def __init__(self, settings: Settings, warehouse: Warehouse, *, with_sink: bool) -> None:
        self.settings = settings
        self._policies: PolicyCache | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.status_sink: StatusSink | None = None
        self.status_sink_error: str | None = None
        self._thread: threading.Thread | None = None
        if with_sink:
            self.status_sink = StatusSink(settings, warehouse)
            self._thread = threading.Thread(target=self._run_status_sink, name="agentledger-status-sink", daemon=True)
            self._thread.start()

    def _run_status_sink(self) -> None:
        assert self.status_sink is not None
        try:
            self.status_sink.run(self._stop)
        except Exception as exc:
            self.status_sink_error = str(exc)
            log.exception("status_sink.crashed")

    def policies(self) -> PolicyCache:
        """The policy cache, read to the topic's end on first use."""
        with self._lock:
            if self._policies is None:
                self._policies = PolicyCache(self.settings)
            cache = self._policies
        cache.start()
        return cache

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            if self._policies is not None:
                self._policies.close()
