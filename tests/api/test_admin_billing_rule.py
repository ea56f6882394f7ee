"""The billing-period rule of api.periods: the SQL condition, evaluated by chDB over every
(occurred month, arrival time) combination, against a plain Python statement of the rule."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest

from api.errors import InvalidParameter
from api.periods import PeriodClose, billing_condition, next_month, parse_period
from api.warehouse.chdb import ChdbWarehouse

pytestmark = pytest.mark.unit

MONTHS = [date(2026, m, 1) for m in range(1, 7)]


def reference(occurred: date, arrived: datetime, closes: dict[date, datetime]) -> date:
    """The month an event is charged in: its own, unless that month was closed before it
    arrived; then the first later month not closed before it arrived."""
    month = occurred
    while month in closes and closes[month] <= arrived:
        month = next_month(month)
    return month


CASES = {
    "none": {},
    "one": {date(2026, 2, 1): datetime(2026, 3, 5, tzinfo=UTC)},
    "in order": {
        date(2026, 1, 1): datetime(2026, 2, 3, tzinfo=UTC),
        date(2026, 2, 1): datetime(2026, 3, 3, tzinfo=UTC),
    },
    "gap": {date(2026, 1, 1): datetime(2026, 2, 3, tzinfo=UTC), date(2026, 3, 1): datetime(2026, 4, 3, tzinfo=UTC)},
    "out of order": {
        date(2026, 3, 1): datetime(2026, 4, 2, tzinfo=UTC),
        date(2026, 2, 1): datetime(2026, 4, 20, tzinfo=UTC),
        date(2026, 1, 1): datetime(2026, 5, 2, tzinfo=UTC),
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_condition_matches_the_rule(tmp_path, case):
    closes = CASES[case]
    arrivals = [datetime(2026, 1, 15, tzinfo=UTC) + timedelta(days=9 * i) for i in range(17)]
    arrivals += [c for c in closes.values()] + [c - timedelta(microseconds=1) for c in closes.values()]
    rows = [(m, a) for m, a in itertools.product(MONTHS, arrivals) if a >= datetime(m.year, m.month, 1, tzinfo=UTC)]
    wh = ChdbWarehouse(tmp_path / "chdb")
    try:
        wh.command("CREATE DATABASE IF NOT EXISTS t")
        wh.command(
            "CREATE TABLE t.l (occurred_at DateTime64(6, 'UTC'), inserted_at DateTime64(6, 'UTC')) ENGINE = Memory"
        )
        wh.insert(
            "t", "l", ("occurred_at", "inserted_at"), [(datetime(m.year, m.month, 10, tzinfo=UTC), a) for m, a in rows]
        )
        close_list = [PeriodClose(p, at, "t") for p, at in closes.items()]
        for period in MONTHS:
            cond, params = billing_condition(period, close_list)
            got = wh.query(
                f"SELECT toDate(toStartOfMonth(occurred_at)) AS m, inserted_at AS a FROM t.l WHERE {cond}", params
            )
            got_set = {(r["m"], r["a"]) for r in got}
            want = {(m, a.replace(tzinfo=UTC)) for m, a in rows if reference(m, a, closes) == period}
            assert got_set == want, f"{case}: period {period}"
    finally:
        wh.close()


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "1999-01", "3000-01", "2026-1", "2026-01'", "", "202601"])
def test_bad_periods(text):
    with pytest.raises(InvalidParameter):
        parse_period(text)
