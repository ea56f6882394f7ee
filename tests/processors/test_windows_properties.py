"""Property tests of the budget window arithmetic (processors/budget/windows.py).

What must hold for every instant and time zone: an event lies inside the window instance
it is assigned to, the instance starts where the documented calendar says, rolling windows
hold exactly their number of buckets, and event-time clamping and lateness are exclusive.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.budget.windows import (
    CALENDAR,
    ROLLING,
    bucket_of,
    bucket_start,
    calendar_start,
    event_time,
    first_live_bucket,
    window_end,
    window_start,
)
from schemas.budgets import Window

pytestmark = pytest.mark.unit

# Zones with DST, half-hour and 45-minute offsets, DST shifts of 30 minutes, the date line,
# and zones whose clocks jump at local midnight (the start of the day does not exist there).
ZONES = (
    "UTC",
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "America/Santiago",
    "America/Havana",
    "Asia/Beirut",
    "America/Sao_Paulo",
)
instants = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC))
zones = st.sampled_from(ZONES)
calendar_windows = st.sampled_from(CALENDAR)
rolling_windows = st.sampled_from(tuple(ROLLING))


@given(calendar_windows, instants, zones)
def test_an_instant_lies_in_the_calendar_period_it_is_assigned_to(window: Window, at: datetime, zone: str) -> None:
    start = calendar_start(window, at, zone)
    assert start.tzinfo is not None
    assert start <= at
    # the period is the latest one that began at or before `at`: its start is a fixed point
    assert calendar_start(window, start, zone) == start
    # and an instant just before it belongs to the previous period
    assert calendar_start(window, start - timedelta(microseconds=1), zone) < start


@given(calendar_windows, instants, zones)
def test_a_calendar_period_starts_on_the_documented_local_day(window: Window, at: datetime, zone: str) -> None:
    start = calendar_start(window, at, zone).astimezone(ZoneInfo(zone))
    local = at.astimezone(ZoneInfo(zone))
    # where a DST jump skips local midnight, the day starts at the first instant after it
    assert start.hour <= 1 and start.second == 0 and start.microsecond == 0
    if window is Window.CALENDAR_DAY:
        assert start.date() == local.date()
    elif window is Window.CALENDAR_WEEK:
        assert start.weekday() == 0
        assert timedelta(0) <= local.date() - start.date() < timedelta(days=7)
    else:
        assert (start.year, start.month, start.day) == (local.year, local.month, 1)


@given(calendar_windows, instants, zones)
def test_calendar_periods_are_no_longer_than_their_unit(window: Window, at: datetime, zone: str) -> None:
    start = calendar_start(window, at, zone)
    longest = {Window.CALENDAR_DAY: 1, Window.CALENDAR_WEEK: 7, Window.CALENDAR_MONTH: 31}[window]
    # at most one DST hour (or two, in zones that moved their clocks by more) on top
    assert at - start < timedelta(days=longest, hours=2)


@given(rolling_windows, instants)
def test_a_rolling_bucket_holds_its_instant(window: Window, at: datetime) -> None:
    bucket = bucket_of(window, at)
    assert bucket_start(window, bucket) <= at < bucket_start(window, bucket + 1)
    assert bucket_start(window, bucket + 1) - bucket_start(window, bucket) == ROLLING[window][1]


@given(rolling_windows, instants)
def test_a_rolling_window_is_exactly_its_length_of_buckets(window: Window, at: datetime) -> None:
    length, size = ROLLING[window]
    first = first_live_bucket(window, at)
    assert (bucket_of(window, at) - first + 1) * size == length
    start = window_start(window, at)
    assert start is not None
    assert start == bucket_start(window, first)
    assert start <= at < start + length


@given(instants, st.integers(-(10**7), 10**7), st.integers(0, 10**6), st.integers(0, 10**7))
def test_event_time_is_clamped_or_late_never_both(at: datetime, offset_s: int, skew_s: int, grace_s: int) -> None:
    occurred = at + timedelta(seconds=offset_s)
    used, clamped, late = event_time(occurred, at, skew_s, grace_s)
    assert not (clamped and late)
    assert clamped == (occurred > at + timedelta(seconds=skew_s))
    assert used == (at if clamped else occurred)
    assert used <= at + timedelta(seconds=skew_s)
    assert late == (not clamped and occurred < at - timedelta(seconds=grace_s))


def test_lifetime_windows_never_start() -> None:
    assert window_start(Window.LIFETIME, datetime(2026, 1, 1, tzinfo=UTC)) is None


@given(calendar_windows, instants, zones)
def test_a_calendar_period_ends_where_the_next_one_starts(window: Window, at: datetime, zone: str) -> None:
    start = calendar_start(window, at, zone)
    end = window_end(window, start, zone)
    assert end is not None and end > at
    assert calendar_start(window, end, zone) == end
    assert calendar_start(window, end - timedelta(microseconds=1), zone) == start


@pytest.mark.parametrize("window", [Window.CALENDAR_DAY, Window.CALENDAR_WEEK, Window.CALENDAR_MONTH])
def test_a_period_that_begins_after_a_skipped_midnight_ends_at_the_next_midnight(window: Window) -> None:
    # Havana's clocks went from 00:00 to 01:00 on Sunday 2 April 2000: that day began at 01:00
    at = datetime(2000, 4, 2, 12, tzinfo=UTC)
    start = calendar_start(window, at, "America/Havana")
    end = window_end(window, start, "America/Havana")
    assert end is not None
    assert calendar_start(window, end, "America/Havana") == end
    assert end.astimezone(ZoneInfo("America/Havana")).hour == 0


@given(rolling_windows, instants)
def test_a_rolling_window_stops_counting_its_oldest_bucket_at_its_end(window: Window, at: datetime) -> None:
    start = window_start(window, at)
    end = window_end(window, start)
    assert start is not None and end is not None and end > at
    assert window_start(window, end - timedelta(microseconds=1)) == start
    assert window_start(window, end) > start


def test_a_lifetime_window_never_ends() -> None:
    assert window_end(Window.LIFETIME, None) is None
