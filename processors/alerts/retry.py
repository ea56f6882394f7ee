"""The retry policy for webhook deliveries, as pure functions.

2xx delivers. 5xx, 429, timeouts and connection errors are retried with exponential backoff
and jitter, up to `max_attempts` in all; a 429's Retry-After is honoured (capped). Every
other answer, 3xx included (redirects are never followed), fails at once: repeating a request
that the receiver rejected does not make it acceptable.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from agentledger.settings import Settings


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_s: float = 0.5
    max_s: float = 30.0
    retry_after_max_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.alert_max_attempts,
            initial_s=settings.alert_backoff_initial_s,
            max_s=settings.alert_backoff_max_s,
            retry_after_max_s=settings.alert_retry_after_max_s,
        )

    def worst_case_wait_s(self) -> float:
        """The longest the retries of one delivery can sleep, for the consumer's poll interval."""
        return sum(max(self.backoff_cap(n), self.retry_after_max_s) for n in range(1, self.max_attempts))

    def backoff_cap(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** (attempt - 1))


def classify(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status == 429 or 500 <= status < 600:
        return Verdict.RETRY
    return Verdict.FAILED


def backoff_s(policy: RetryPolicy, attempt: int, rng: Callable[[], float] = random.random) -> float:
    """The wait after failed attempt `attempt` (1-based): half the capped exponential, plus jitter
    of up to the other half, so that dispatchers that failed together do not retry together."""
    cap = policy.backoff_cap(attempt)
    return cap / 2 + rng() * cap / 2


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from `now`: delta-seconds or an HTTP date; None if absent or invalid."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def next_delay(
    policy: RetryPolicy,
    attempt: int,
    status: int | None,
    retry_after: str | None,
    now: datetime,
    rng: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before the next attempt after a retryable failure; None when none is left."""
    if attempt >= policy.max_attempts:
        return None
    if status == 429:
        asked = retry_after_s(retry_after, now)
        if asked is not None:
            return min(asked, policy.retry_after_max_s)
    return backoff_s(policy, attempt, rng)
