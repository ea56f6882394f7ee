"""The rollups under crashes: a sink killed between insert and commit, or between the raw
insert and the ledger insert, then restarted, leaves every rollup total unchanged; and the
deduplication token covers the views' inserts too."""

from __future__ import annotations

from decimal import Decimal

import pytest

from api.migrations import migrate
from api.sink import LEDGER_COLUMNS, Sink, SinkError, first_seen, priced_event_row
from api.warehouse import WarehouseError
from tests.api.conftest import SinkThread, wait_caught_up
from tests.api.test_reports_pipeline import rollup_sums

pytestmark = pytest.mark.integration


class Crash(Exception):
    pass


def _replay(settings, wh) -> Sink:
    runner = SinkThread(Sink(settings, wh))
    try:
        wait_caught_up(settings)
    finally:
        runner.stop()
    assert runner.error is None
    return runner.sink


def test_crash_between_insert_and_commit_leaves_rollups_unchanged(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced
):
    settings = settings_factory(sink_batch_rows=1000, sink_batch_seconds=1.0)
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    events = [priced_event_factory(cost=f"0.{i:02d}0000000003", team=f"t{i % 3}") for i in range(40)]
    produce_priced(settings, events, partition=0)

    crashing = Sink(settings, wh)

    def crash_instead_of_commit(offsets):
        raise Crash("killed after insert, before commit")

    crashing._commit = crash_instead_of_commit
    runner = SinkThread(crashing)
    runner.thread.join(60)
    assert isinstance(runner.error, Crash)
    before = rollup_sums(wh, settings.database)
    want = sum((e.cost for e in events), Decimal(0))
    assert before["rollup_daily"]["cost"] == before["rollup_hourly"]["cost"] == want
    assert before["ledger_rows"] == 40

    replayed = _replay(settings, wh)
    assert replayed.rows_inserted == 40 and replayed.duplicates_skipped == 40 and replayed.ledger_rows == 0
    assert rollup_sums(wh, settings.database) == before


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

    replayed = _replay(settings, wh)
    assert replayed.ledger_rows == 12
    sums = rollup_sums(wh, settings.database)
    assert sums["rollup_daily"]["cost"] == sums["rollup_hourly"]["cost"] == Decimal("12.000000000012")
    assert sums["rollup_daily"]["calls"] == 12


def test_one_token_lands_a_ledger_block_and_its_view_blocks_once(
    settings_factory, warehouse_factory, priced_event_factory
):
    # What the token is for: the same ledger block sent twice (a retry after a lost reply)
    # lands once in the ledger and once in each rollup (deduplicate_blocks_in_dependent_materialized_views).
    settings = settings_factory()
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    rows = [priced_event_row(priced_event_factory(cost="0.25"), "t", 0, o) for o in range(8)]
    ledger = first_seen(rows, set())
    for _ in range(3):
        wh.insert(settings.database, "event_ledger", LEDGER_COLUMNS, ledger, dedup_token="t:0:0:7:ledger")
    sums = rollup_sums(wh, settings.database)
    assert sums["ledger_rows"] == 8
    assert sums["rollup_hourly"]["cost"] == sums["rollup_daily"]["cost"] == Decimal("2.000000000000")
    assert sums["rollup_daily"]["calls"] == 8
