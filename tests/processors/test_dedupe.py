"""The dedupe store: one record per partition per batch, an index by event id that follows faust's
own changes to the records (restore from the changelog, partitions moved away, expiry)."""

from __future__ import annotations

import asyncio
import types
import uuid

import faust
import pytest
from faust.types import TP

from processors.dedupe import STORE_URL, DedupeStore, Seen, decode_record, encode_record, record_key

pytestmark = pytest.mark.unit


def _store() -> DedupeStore:
    app = faust.App(f"dedupe-test-{uuid.uuid4().hex[:6]}", store="memory://", autodiscover=False)
    table = app.Table("dedupe", partitions=3, key_type=bytes, value_type=bytes, store=STORE_URL)
    store = table.data
    assert isinstance(store, DedupeStore)
    return store


def _changelog(key: bytes, value: bytes | None, partition: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(key=key, value=value, message=types.SimpleNamespace(value=value, partition=partition))


def _restore(store: DedupeStore, records: list[tuple[bytes, bytes | None, int]]) -> None:
    store.apply_changelog_batch([_changelog(k, v, p) for k, v, p in records], lambda k: k, lambda v: v)


def test_record_round_trip_and_key():
    seen = Seen(1_700_000_000, ("a" * 32, "b" * 32))
    assert decode_record(encode_record(seen)) == seen
    assert record_key(2, 1234) == b"2:1234"


def test_put_then_seen_within_the_horizon_only():
    store = _store()
    store.put(record_key(0, 10), Seen(1000, ("e1", "e2")), 0)
    assert store.seen("e1", horizon=1000)
    assert store.seen("e2", horizon=999)
    assert not store.seen("e1", horizon=1001)  # older than the retention
    assert not store.seen("e3", horizon=0)
    assert store._key_partition[b"0:10"] == 0


def test_a_restore_rebuilds_the_index_from_the_committed_records():
    store = _store()
    store.put(record_key(0, 5), Seen(1000, ("mine",)), 0)
    _restore(
        store,
        [
            (record_key(1, 0), encode_record(Seen(1000, ("r1", "r2"))), 1),
            (record_key(2, 7), encode_record(Seen(1000, ("r3",))), 2),
            (record_key(2, 7), None, 2),  # expired and tombstoned later in the changelog
        ],
    )
    assert [store.seen(e, 0) for e in ("mine", "r1", "r2", "r3")] == [True, True, True, False]


def test_partitions_moved_away_are_forgotten():
    store = _store()
    store.put(record_key(0, 1), Seen(1000, ("p0",)), 0)
    store.put(record_key(1, 1), Seen(1000, ("p1",)), 1)
    asyncio.run(store.on_recovery_completed({TP("t", 1)}, set()))
    assert not store.seen("p0", 0)
    assert store.seen("p1", 0)


def test_expire_drops_old_records_and_names_their_tombstones():
    store = _store()
    store.put(record_key(0, 1), Seen(100, ("old", "again")), 0)
    store.put(record_key(1, 9), Seen(500, ("new",)), 1)
    store.put(record_key(2, 3), Seen(600, ("again",)), 2)  # a later record of the same id wins
    assert list(store.expire(horizon=400)) == [(b"0:1", 0)]
    assert not store.seen("old", 0)
    assert store.seen("again", 0)
    assert store.seen("new", 0)
    assert sorted(store.data) == [b"1:9", b"2:3"]
