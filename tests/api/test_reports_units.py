"""Pure parts of the reports: the allocation arithmetic, the query builders, the FOCUS list."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.errors import InvalidParameter
from api.queries import choose_source, parse_report_group_by, report_query, session_events_query
from api.reports.allocation import MONEY_QUANTUM, AllocationError, allocate, largest_remainder
from api.reports.focus import FOCUS_1_2_COLUMNS, focus_row

pytestmark = pytest.mark.unit


def test_largest_remainder_by_hand():
    assert largest_remainder(Decimal("1.000000000000"), [Decimal(1)] * 3, MONEY_QUANTUM) == [
        Decimal("0.333333333334"),
        Decimal("0.333333333333"),
        Decimal("0.333333333333"),
    ]
    assert largest_remainder(Decimal("-0.000000000005"), [Decimal(1), Decimal(3)], MONEY_QUANTUM) == [
        Decimal("-0.000000000001"),
        Decimal("-0.000000000004"),
    ]
    assert largest_remainder(Decimal(7), [Decimal(2), Decimal(1)], Decimal(1)) == [5, 2]
    with pytest.raises(AllocationError):
        largest_remainder(Decimal(1), [Decimal(0)], MONEY_QUANTUM)
    with pytest.raises(AllocationError):
        largest_remainder(Decimal("0.0000000000001"), [Decimal(1)], MONEY_QUANTUM)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.lists(st.integers(min_value=0, max_value=10**15), min_size=1, max_size=12).filter(any),
)
def test_largest_remainder_adds_up_exactly(units, weights):
    total = Decimal(units) * MONEY_QUANTUM
    ws = [Decimal(w) for w in weights]
    parts = largest_remainder(total, ws, MONEY_QUANTUM)
    assert sum(parts, Decimal(0)) == total
    for part, w in zip(parts, ws, strict=True):
        exact = total * w / sum(ws)
        assert abs(part - exact) < MONEY_QUANTUM
        assert part == part.quantize(MONEY_QUANTUM)


def _row(team, cost, calls=1):
    return {"team": team, "day": "d", "cost": Decimal(cost), "list_cost": Decimal(cost), "calls": calls}


def test_allocate_report_and_distribute():
    rows = [_row("a", "3"), _row("b", "1"), _row(None, "1.000000000001", 3)]
    report = allocate(rows, ("team", "day"), "team", "report", ("cost", "list_cost"), ("calls",))
    assert [(r["team"], r["allocation"]) for r in report] == [("a", "direct"), ("b", "direct"), (None, "unallocated")]
    prop = allocate(rows, ("team", "day"), "team", "proportional", ("cost", "list_cost"), ("calls",))
    assert [(r["team"], r["cost"], r["allocated_cost"], r["calls"]) for r in prop] == [
        ("a", Decimal("3.750000000001"), Decimal("0.750000000001"), 3),
        ("b", Decimal("1.250000000000"), Decimal("0.250000000000"), 2),
    ]
    even = allocate(rows, ("team", "day"), "team", "even", ("cost", "list_cost"), ("calls",))
    assert [r["allocated_cost"] for r in even] == [Decimal("0.500000000001"), Decimal("0.500000000000")]
    # nothing to distribute to: the unallocated row stays
    alone = allocate([_row(None, "2")], ("team", "day"), "team", "even", ("cost",), ("calls",))
    assert [(r["team"], r["allocation"]) for r in alone] == [(None, "unallocated")]


def test_group_by_allow_list_and_sources():
    assert parse_report_group_by("team, month,team,") == ("team", "month")
    for bad in ("team'--", "tags['x']", "cost", "`team`", "team OR 1=1"):
        with pytest.raises(InvalidParameter) as info:
            parse_report_group_by(bad)
        assert info.value.field == "group_by"
    day = datetime(2026, 3, 1, tzinfo=UTC)
    hour = datetime(2026, 3, 1, 5, tzinfo=UTC)
    odd = datetime(2026, 3, 1, 5, 30, tzinfo=UTC)
    assert choose_source(("team",), day, None, {}) == "rollup_daily"
    assert choose_source(("team",), hour, None, {}) == "rollup_hourly"
    assert choose_source(("hour",), None, None, {}) == "rollup_hourly"
    assert choose_source(("team",), odd, None, {}) == "ledger"
    assert choose_source(("team",), None, None, {"session_id": "s"}) == "ledger"


def test_report_sql_binds_every_value():
    nasty = "x' OR 1=1 --"
    start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    sql, params, source = report_query("db_x", ("team", "month"), start, end, {"team": nasty, "model": "m"})
    assert source == "rollup_daily"
    assert sql == (
        "SELECT team AS team, toStartOfMonth(day) AS month, sum(cost) AS cost, sum(list_cost) AS list_cost, "
        "sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
        "sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens, "
        "sum(reasoning_tokens) AS reasoning_tokens, sum(calls) AS calls "
        "FROM {database:Identifier}.rollup_daily WHERE day >= {start:Date} AND day < {end:Date} "
        "AND model = {f0:String} AND team = {f1:String} GROUP BY team, month ORDER BY team, month"
    )
    assert params == {"database": "db_x", "start": start.date(), "end": end.date(), "f0": "m", "f1": nasty}
    sql, params, source = report_query("db_x", ("session_id",), None, None, {}, order_by_cost=True, limit=5)
    assert (
        source == "ledger"
        and "countIf(kind IN ('llm_call', 'tool_call')) AS calls" in sql
        and "kind != 'call_started'" in sql
    )
    assert sql.endswith("ORDER BY cost DESC, session_id LIMIT {limit:UInt32}") and params["limit"] == 5
    with pytest.raises(InvalidParameter):
        report_query("db_x", ("team",), filters={"tags['x']": "1"})
    with pytest.raises(InvalidParameter):
        report_query("db_x", ("session_id",), source="rollup_daily")
    sql, params = session_events_query("db_x", nasty, {"team": "t"})
    assert nasty not in sql and params["session_id"] == nasty and params["f0"] == "t"


def test_focus_column_list_is_the_1_2_one():
    names = [c.name for c in FOCUS_1_2_COLUMNS]
    assert names == sorted(names) and len(names) == 57
    # columns new in 1.2 are there; ones from later drafts are not
    assert {"BillingAccountType", "SubAccountType", "InvoiceId", "PricingCurrency", "SkuPriceDetails"} <= set(names)
    assert not {"ServiceProviderName", "HostProviderName", "ContractApplied"} & set(names)
    not_null = {c.name for c in FOCUS_1_2_COLUMNS if c.level == "Mandatory" and not c.nullable}
    assert "BilledCost" in not_null and "PricingQuantity" not in not_null


@pytest.mark.integration
def test_string_parameters_round_trip_through_the_engine(tmp_path):
    from api.warehouse.chdb import ChdbWarehouse

    wh = ChdbWarehouse(tmp_path / "chdb")
    try:
        for value in ("a\\b", "x\\", "\\' OR 1=1 --", "tab\there", "line\nbreak", "HU^[\\", "\\N", "é"):
            assert wh.query("SELECT {v:String} AS v", {"v": value}) == [{"v": value}], value
    finally:
        wh.close()


def _focus_input(day: date, category: str | None) -> dict:
    row = {"day": day, "agent_type": "triage", "provider": "openai", "model": "gpt-4o", "team": "t", "project": None,
           "customer": None, "currency": "USD", "cost": Decimal("-0.25"), "list_cost": Decimal("-0.3"), "calls": 0,
           "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
           "reasoning_tokens": 0}  # fmt: skip
    if category is not None:
        row["charge_category"] = category
    return row


@pytest.mark.parametrize(
    ("day", "category", "billing_period", "want"),
    [
        # by event time: billed in the month it occurred, always usage
        (date(2026, 3, 9), None, None, ("Usage", None, 3, 3, "Tokens")),
        # a billing period's export: its own month's adjustment, and a correction of a closed month
        (date(2026, 4, 2), "Adjustment", date(2026, 4, 1), ("Adjustment", None, 4, 4, None)),
        (date(2026, 3, 30), "Adjustment", date(2026, 4, 1), ("Adjustment", "Correction", 4, 3, None)),
        (date(2026, 3, 30), "Usage", date(2026, 4, 1), ("Usage", "Correction", 4, 3, "Tokens")),
    ],
)
def test_focus_charge_category_class_and_periods(day, category, billing_period, want):
    out = focus_row(_focus_input(day, category), billing_account="acme", billing_period=billing_period)
    got = (
        out["ChargeCategory"],
        out["ChargeClass"],
        out["BillingPeriodStart"].month,
        out["ChargePeriodStart"].month,
        out["ConsumedUnit"],
    )
    assert got == want
    assert out["BilledCost"] == Decimal("-0.25") and out["ListCost"] == Decimal("-0.3")
