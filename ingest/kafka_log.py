"""The librdkafka logger of the hook: repeated client errors (a broker down retries every
few milliseconds) are logged once per interval, not on every attempt, in the host's logs."""

from __future__ import annotations

import logging
import threading
import time

REPEAT_INTERVAL_S = 30.0


class RepeatFilter(logging.Filter):
    """Pass a message the first time, then at most once per `interval` seconds."""

    def __init__(self, interval: float = REPEAT_INTERVAL_S) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        # librdkafka's text carries the failing broker and state; digits (timings) vary.
        key = "".join(c for c in record.getMessage() if not c.isdigit())
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, float("-inf")) < self.interval:
                return False
            if len(self._last) > 1000:
                self._last.clear()
            self._last[key] = now
        return True


_logger = logging.getLogger("agentledger.ingest.kafka")
_logger.addFilter(RepeatFilter())


def kafka_logger() -> logging.Logger:
    return _logger
