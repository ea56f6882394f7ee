"""The rollups under crashes: a sink killed between insert and commit, between the raw insert
and the ledger insert, or between the ledger insert and its rollups, then restarted, leaves
every rollup total exact; a ledger insert cut short is finished once."""

from __future__ import annotations

from decimal import Decimal

import pytest

from api.migrations import migrate
from api.queries import rollup_drift_query
from api.sink import LEDGER_COLUMNS, Sink, SinkError, first_seen, ledger_token_of, priced_event_row
from api.warehouse import WarehouseError
from schemas.events import EventKind
from tests.api.conftest import SinkThread, sink_until_caught_up, sink_until_crash_before_commit
from tests.api.test_reports_pipeline import rollup_sums

pytestmark = pytest.mark.integration


def test_crash_between_insert_and_commit_leaves_rollups_unchanged(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced
):
    settings = settings_factory(sink_batch_rows=1000, sink_batch_seconds=1.0)
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    events = [priced_event_factory(cost=f"0.{i:02d}0000000003", team=f"t{i % 3}") for i in range(40)]
    produce_priced(settings, events, partition=0)

    sink_until_crash_before_commit(settings, wh)
    before = rollup_sums(wh, settings.database)
    want = sum((e.cost for e in events), Decimal(0))
    assert before["rollup_daily"]["cost"] == before["rollup_hourly"]["cost"] == want
    assert before["ledger_rows"] == 40

    replayed = sink_until_caught_up(settings, wh)
    assert replayed.rows_inserted == 40 and replayed.duplicates_skipped == 40 and replayed.ledger_rows == 0
    assert rollup_sums(wh, settings.database) == before


def test_a_batch_over_three_partitions_is_one_block_and_its_replay_is_dropped(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced
):
    # Every record is read before the batch is cut (a batch is up to 1000 records or 3 s), so
    # both runs make the same block of the three partitions under the same token.
    settings = settings_factory(sink_batch_rows=1000, sink_batch_seconds=3.0)
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    events = [priced_event_factory(cost=f"0.{i:02d}0000000007", team=f"t{i % 4}") for i in range(30)]
    for partition in range(3):
        produce_priced(settings, events[partition::3], partition=partition)

    crashing = sink_until_crash_before_commit(settings, wh)
    assert (crashing.batches, crashing.rows_inserted, crashing.ledger_rows) == (1, 30, 30)
    db = {"db": settings.database}
    [parts] = wh.query(
        "SELECT count() AS n FROM system.parts WHERE database = {db:String} AND table = 'priced_events' AND active",
        db,
    )
    assert parts["n"] == 1
    before = rollup_sums(wh, settings.database)
    assert before["rollup_daily"]["cost"] == sum((e.cost for e in events), Decimal(0))

    replayed = sink_until_caught_up(settings, wh)
    assert (replayed.batches, replayed.rows_inserted, replayed.duplicates_skipped) == (1, 30, 30)
    [raw] = wh.query("SELECT count() AS n FROM {db:Identifier}.priced_events", db)
    assert raw["n"] == 30  # the repeated block was dropped
    assert rollup_sums(wh, settings.database) == before


def test_a_batch_holds_at_most_sink_batch_rows_records(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced
):
    settings = settings_factory(sink_batch_rows=10, sink_batch_seconds=2.0)
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    events = [priced_event_factory(cost="0.5") for _ in range(25)]
    for partition in range(3):
        produce_priced(settings, events[partition::3], partition=partition)
    sink = sink_until_caught_up(settings, wh)
    # 10 + 10 read at once, the last 5 cut by time
    assert (sink.batches, sink.rows_inserted, sink.ledger_rows) == (3, 25, 25)
    assert rollup_sums(wh, settings.database)["rollup_daily"]["cost"] == Decimal("12.5")


class LedgerFails:
    """The real warehouse, but the first ledger insert fails as if the process died there."""

    def __init__(self, inner):
        self.inner = inner
        self.backend = inner.backend
        self.failed = False

    def insert(self, database, table, *args, **kwargs):
        if table == "event_ledger" and not self.failed:
            self.failed = True
            raise WarehouseError("Code: 1000. killed before the ledger insert", code=1000, retryable=False)
        return self.inner.insert(database, table, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_crash_between_raw_and_ledger_insert_rolls_up_once_on_replay(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced
):
    settings = settings_factory(sink_batch_seconds=0.3)
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    events = [priced_event_factory(cost="1.000000000001", team=("a", "b")[i % 2]) for i in range(12)]
    produce_priced(settings, events, partition=1)
    runner = SinkThread(Sink(settings, LedgerFails(wh)))
    runner.thread.join(60)
    assert isinstance(runner.error, SinkError)
    assert rollup_sums(wh, settings.database)["ledger_rows"] == 0

    replayed = sink_until_caught_up(settings, wh)
    assert replayed.ledger_rows == 12
    sums = rollup_sums(wh, settings.database)
    assert sums["rollup_daily"]["cost"] == sums["rollup_hourly"]["cost"] == Decimal("12.000000000012")
    assert sums["rollup_daily"]["calls"] == 12


class RollupFails:
    """The real warehouse, but the sink dies at its `n`th rollup statement, as if killed there:
    the ledger rows are in, some or none of their rollups are."""

    def __init__(self, inner, n: int):
        self.inner = inner
        self.backend = inner.backend
        self.left = n

    def command(self, sql, params=None):
        if sql.startswith("INSERT INTO"):
            self.left -= 1
            if self.left == 0:
                raise WarehouseError("Code: 1000. killed inside the rollups", code=1000, retryable=False)
        return self.inner.command(sql, params)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("dies_at", [1, 2], ids=["before-hourly", "between-hourly-and-daily"])
def test_crash_after_ledger_insert_inside_the_rollups_is_repaired_on_replay(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced, dies_at
):
    settings = settings_factory(sink_batch_seconds=0.3)
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    events = [priced_event_factory(cost="0.333333333333", team=("a", "b", "c")[i % 3]) for i in range(30)]
    produce_priced(settings, events, partition=2)
    runner = SinkThread(Sink(settings, RollupFails(wh, dies_at)))
    runner.thread.join(60)
    assert isinstance(runner.error, SinkError)
    short = rollup_sums(wh, settings.database)
    assert short["ledger_rows"] == 30
    assert short["rollup_daily"]["calls"] == 0  # the daily rollup never ran: this is the gap a replay must fill

    replayed = sink_until_caught_up(settings, wh)
    assert replayed.ledger_rows == 0  # every event was already in the ledger
    sums = rollup_sums(wh, settings.database)
    want = Decimal("9.999999999990")
    assert sums["rollup_hourly"]["cost"] == sums["rollup_daily"]["cost"] == want
    assert sums["rollup_hourly"]["calls"] == sums["rollup_daily"]["calls"] == 30
    [drift] = wh.query(*rollup_drift_query(settings.database))
    assert set(drift.values()) == {0}
    # a second replay of the same offsets (nothing committed yet would do it) changes nothing
    assert rollup_sums(wh, settings.database) == sums


def test_partly_landed_ledger_insert_is_completed_under_another_token(
    settings_factory, warehouse_factory, priced_event_factory
):
    """A ledger insert cut short (some parts landed) is finished under a token of its own rows,
    never one the engine would drop as a repeat; every row is rolled up once."""
    settings = settings_factory()
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    sink = Sink(settings, wh)
    rows = [priced_event_row(priced_event_factory(cost="0.25"), sink.topic, 0, o) for o in range(8)]
    token = "t:0:0:7"
    landed = ledger_token_of(token, first_seen(rows, set()))  # the insert that was cut short
    half = [(*r, landed) for r in first_seen(rows[:4], set())]
    wh.insert(settings.database, "event_ledger", (*LEDGER_COLUMNS, "ledger_token"), half, dedup_token=landed)
    tokens = sink._insert_ledger(rows, token, [(0, 0, 7)])
    assert landed in tokens and len(tokens) == 2
    for t in sorted(tokens):
        sink._roll_up(t)
        sink._roll_up(t)  # a retry after a lost reply lands once
    sums = rollup_sums(wh, settings.database)
    assert sums["ledger_rows"] == 8
    assert sums["rollup_hourly"]["cost"] == sums["rollup_daily"]["cost"] == Decimal("2.000000000000")
    assert sums["rollup_daily"]["calls"] == 8


def test_reports_count_llm_and_tool_calls_not_adjustments(settings_factory, warehouse_factory, priced_event_factory):
    settings = settings_factory()
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    sink = Sink(settings, wh)
    call = priced_event_factory(cost="1.5")
    adjustment = priced_event_factory(cost="-0.5")
    adjustment = adjustment.model_copy(
        update={"event": adjustment.event.model_copy(update={"kind": EventKind.ADJUSTMENT})}
    )
    rows = [priced_event_row(p, sink.topic, 0, o) for o, p in enumerate((call, adjustment))]
    for t in sorted(sink._insert_ledger(rows, "t:0:0:1", [(0, 0, 1)])):
        sink._roll_up(t)
    sums = rollup_sums(wh, settings.database)
    assert sums["rollup_daily"]["cost"] == sums["rollup_hourly"]["cost"] == Decimal("1.000000000000")
    assert sums["rollup_daily"]["calls"] == sums["rollup_hourly"]["calls"] == 1
    [drift] = wh.query(*rollup_drift_query(settings.database))
    assert set(drift.values()) == {0}
