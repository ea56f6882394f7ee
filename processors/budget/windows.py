"""Budget windows by event time: where a window starts, and rolling buckets.

Lifetime windows never start (None). Calendar windows start at local midnight, Monday or
the first of the month in the policy's time zone. Rolling windows are sums of small
buckets, so they slide without a reset job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from schemas.budgets import Window

ROLLING: dict[Window, tuple[timedelta, timedelta]] = {
    # window length, bucket size
    Window.ROLLING_1H: (timedelta(hours=1), timedelta(minutes=1)),
    Window.ROLLING_24H: (timedelta(hours=24), timedelta(minutes=15)),
    Window.ROLLING_7D: (timedelta(days=7), timedelta(hours=1)),
    Window.ROLLING_30D: (timedelta(days=30), timedelta(hours=6)),
}

CALENDAR = (Window.CALENDAR_DAY, Window.CALENDAR_WEEK, Window.CALENDAR_MONTH)


def is_rolling(window: Window) -> bool:
    return window in ROLLING


def calendar_start(window: Window, at: datetime, timezone: str = "UTC") -> datetime:
    """The UTC instant the calendar period containing `at` began in `timezone`."""
    local = at.astimezone(ZoneInfo(timezone))
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if window is Window.CALENDAR_DAY:
        start = day
    elif window is Window.CALENDAR_WEEK:
        start = day - timedelta(days=day.weekday())
    elif window is Window.CALENDAR_MONTH:
        start = day.replace(day=1)
    else:
        raise ValueError(f"not a calendar window: {window}")
    # re-attach the zone so a DST change inside the period is accounted for
    start = start.replace(tzinfo=None).replace(tzinfo=ZoneInfo(timezone))
    return start.astimezone(UTC)


def bucket_of(window: Window, at: datetime) -> int:
    """The index (seconds since the epoch / bucket size) of the rolling bucket holding `at`."""
    _, size = ROLLING[window]
    return int(at.timestamp() // size.total_seconds())


def bucket_start(window: Window, bucket: int) -> datetime:
    _, size = ROLLING[window]
    return datetime.fromtimestamp(bucket * size.total_seconds(), tz=UTC)


def first_live_bucket(window: Window, at: datetime) -> int:
    """The oldest bucket still inside the rolling window that ends with the bucket holding `at`."""
    length, size = ROLLING[window]
    return bucket_of(window, at) - int(length / size) + 1


def window_start(window: Window, at: datetime, timezone: str = "UTC") -> datetime | None:
    """The start of the window instance an event at `at` belongs to; None for lifetime.

    For rolling windows this is the start of the oldest live bucket.
    """
    if window is Window.LIFETIME:
        return None
    if window in CALENDAR:
        return calendar_start(window, at, timezone)
    return bucket_start(window, first_live_bucket(window, at))


def window_end(window: Window, start: datetime | None, timezone: str = "UTC") -> datetime | None:
    """When spend counted in the window instance starting at `start` stops counting: the next
    calendar period's start, or when a rolling window's oldest bucket slides out; None for a
    lifetime window."""
    if window is Window.LIFETIME or start is None:
        return None
    if window in CALENDAR:
        # from the period's first midnight on the wall clock: where a zone skips midnight (a DST
        # change at 00:00, America/Havana) the period began at 01:00, and a day later is not the
        # next period's start
        local = start.astimezone(ZoneInfo(timezone)).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
        if window is Window.CALENDAR_DAY:
            later = local + timedelta(days=1)
        elif window is Window.CALENDAR_WEEK:
            later = local + timedelta(days=7)
        else:
            later = (local.replace(day=1) + timedelta(days=32)).replace(day=1)
        # a wall-clock date in the zone, so a DST change inside the period is accounted for
        return later.replace(tzinfo=ZoneInfo(timezone)).astimezone(UTC)
    length, _ = ROLLING[window]
    return start + length  # the oldest bucket is `start`; it counts until the window has moved a whole length


@dataclass(frozen=True, slots=True)
class EventClock:
    """`event_time` for every event seen at one `now` (a worker's batch), its bounds worked out once."""

    now: datetime
    latest: datetime
    """A date after this is clamped to `now`."""
    on_time_from: datetime
    """A date before this is late."""

    @classmethod
    def at(cls, now: datetime, max_future_skew_s: float, late_grace_s: float) -> EventClock:
        return cls(now, now + timedelta(seconds=max_future_skew_s), now - timedelta(seconds=late_grace_s))

    def time_of(self, occurred_at: datetime) -> tuple[datetime, bool, bool]:
        """`event_time(occurred_at, now, ...)`."""
        if occurred_at > self.latest:
            return self.now, True, False
        return occurred_at, False, occurred_at < self.on_time_from


def event_time(
    occurred_at: datetime, now: datetime, max_future_skew_s: float, late_grace_s: float
) -> tuple[datetime, bool, bool]:
    """(the time budgets use, clamped, late) for an event dated `occurred_at` and seen at `now`.

    A date further in the future than the skew allows is clamped to `now`; an event older than
    the grace period is late: still charged, and counted only in windows still open at `now`.
    """
    return EventClock.at(now, max_future_skew_s, late_grace_s).time_of(occurred_at)
