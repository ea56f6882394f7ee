"""Which event ids a worker has already processed: one changelog record per partition per batch.

The `dedupe` table's keys are `{partition}:{offset}`, the offset of the first new event of that
partition in a batch, and its values hold the batch's time and its new event ids. A record per
event would be as many changelog writes as events (and as many records to restore); a record
per batch is one write per source partition per batch. The key cannot collide with a committed
record: an event in a committed record is seen on any replay, so it never starts a record again.

The lookup by event id is an index over the store's records, kept by our own writes and rebuilt
from the records whenever faust changes the store itself (a restore from the changelog, or the
drop of partitions that moved to another worker), so it never answers from a record that is gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from faust.stores import STORES
from faust.stores.memory import Store

STORE_URL = "agentledger-dedupe://memory"  # a host: yarl reads a URL without one as false, and faust as unset


@dataclass(frozen=True, slots=True)
class Seen:
    """One batch's new event ids of one source partition."""

    at: int  # when they were processed, epoch seconds
    event_ids: tuple[str, ...]


def record_key(partition: int, offset: int) -> bytes:
    return b"%d:%d" % (partition, offset)


def encode_record(seen: Seen) -> bytes:
    return orjson.dumps([seen.at, seen.event_ids])


def decode_record(raw: bytes) -> Seen:
    at, ids = orjson.loads(raw)
    return Seen(int(at), tuple(ids))


class DedupeStore(Store):
    """faust's memory store plus an index event id -> (time, record key) over its records."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.index: dict[str, tuple[int, bytes]] = {}
        self.stale = False

    # faust's own changes to the records: the index is rebuilt on the next lookup

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Any, to_value: Any) -> None:
        super().apply_changelog_batch(batch, to_key, to_value)
        self.stale = True

    async def on_recovery_completed(self, active_tps: Any, standby_tps: Any) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        self.stale = True

    def _clear(self) -> None:
        super()._clear()
        self.stale = True

    def _rebuild(self) -> None:
        index: dict[str, tuple[int, bytes]] = {}
        for key, raw in self.data.items():
            seen = decode_record(raw)
            for event_id in seen.event_ids:
                index[event_id] = (seen.at, key)
        self.index = index
        self.stale = False

    # the worker's side

    def seen(self, event_id: str, horizon: float) -> bool:
        """Whether `event_id` was processed at or after `horizon` (epoch seconds)."""
        if self.stale:
            self._rebuild()
        hit = self.index.get(event_id)
        return hit is not None and hit[0] >= horizon

    def put(self, key: bytes, seen: Seen, partition: int) -> bytes:
        """Keep a batch's record (the caller writes it to the changelog); returns its value."""
        if self.stale:
            self._rebuild()
        raw = encode_record(seen)
        self.data[key] = raw
        self._key_partition[key] = partition
        for event_id in seen.event_ids:
            self.index[event_id] = (seen.at, key)
        return raw

    def expire(self, horizon: float) -> Iterator[tuple[bytes, int]]:
        """Drop the records older than `horizon`; yields (key, partition) of each, for its tombstone."""
        if self.stale:
            self._rebuild()
        old = [(key, decode_record(raw)) for key, raw in self.data.items()]
        for key, seen in old:
            if seen.at >= horizon:
                continue
            self.data.pop(key, None)
            partition = self._key_partition.pop(key, None)
            for event_id in seen.event_ids:
                if self.index.get(event_id, (0, b""))[1] == key:
                    del self.index[event_id]
            if partition is not None:
                yield key, partition


STORES.aliases.setdefault(STORE_URL.split(":", 1)[0], f"{__name__}:DedupeStore")
