"""Where the sink's time goes per event, without Kafka: its own code over priced events as the
worker writes them, timed stage by stage on the same events.

The events are the pipeline benchmark's, priced by the worker's own pricer and encoded by its
encoder. Stages, each a median of `repeats` runs, in µs per event:

- model path: pydantic decode, `priced_event_row`, encoding the rows for chDB (what every
  record cost before the fast path, and what a record the fast path refuses still costs);
- fast path: `orjson.loads`, the shape check, `fast_row`, encoding;
- accept: `Sink._accept` on each message (parse, check, row, pending);
- insert / ledger / rollups: the block's insert into `priced_events`, the ledger lookup and
  insert, the rollups, as `Sink._insert` runs them (one block per `sink_batch_rows` messages);
- sink_total: accept + insert + ledger + rollups, the sink's in-process work per event.

    .venv/bin/python -m bench.sink_breakdown [--events 20000]
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from agentledger.settings import Settings
from bench.common import median
from bench.pipeline import TOKEN_CAP_NEVER_REACHED, make_events


class _Message:
    """What the sink reads of a confluent_kafka Message."""

    def __init__(self, topic: str, partition: int, offset: int, key: bytes, value: bytes) -> None:
        self._topic, self._partition, self._offset, self._key, self._value = topic, partition, offset, key, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


def priced_blobs(n: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of n priced events, as the worker writes them to priced-events."""
    from processors.app import LedgerApp, parse_event
    from schemas.codec import encode

    tag = uuid.uuid4().hex[:6]
    # nothing here talks to Kafka: the clients are created but never used
    settings = Settings(
        topic_prefix=f"benchsb{tag}.", worker_id=f"benchsb-{tag}", session_token_cap=TOKEN_CAP_NEVER_REACHED
    )
    app = LedgerApp(settings)
    now = datetime.now(UTC)
    out = []
    for key, value in make_events(n):
        event = parse_event(value).model_copy(update={"received_at": now})  # type: ignore[union-attr]
        out.append((key, encode(app.pricer.price(event, now))))
    app.signals._producer.flush(0)
    app.policies._consumer.close()
    return out


def _timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def _sink_stages(blobs: list[tuple[bytes, bytes]]) -> dict[str, float]:
    """Seconds of each of the sink's own stages over all of `blobs`, on a fresh chDB folder."""
    from api import sink as sinkmod
    from api.migrations import migrate
    from api.warehouse.chdb import ChdbWarehouse

    out: dict[str, float] = {"ledger": 0.0, "rollups": 0.0}
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(topic_prefix=f"benchsb{uuid.uuid4().hex[:6]}.", chdb_path=Path(folder))
        wh = ChdbWarehouse(Path(folder))
        try:
            migrate(wh, settings.database)
            sink = sinkmod.Sink(settings, wh)
            messages: list[Any] = [_Message(sink.topic, i % 3, i // 3, k, v) for i, (k, v) in enumerate(blobs)]

            def accept() -> None:
                for m in messages:
                    sink._accept(m)

            out["accept"] = _timed(accept)[0]
            # the batches Sink.run reads: sink_batch_rows messages each, one block per batch
            by_offset = {(r[2].partition(), r[0]): r for records in sink._pending.values() for r in records}
            size = settings.sink_batch_rows
            blocks = []
            for start in range(0, len(messages), size):
                pending: dict[int, list[Any]] = {}
                for m in messages[start : start + size]:
                    pending.setdefault(m.partition(), []).append(by_offset[(m.partition(), m.offset())])
                blocks.append(sorted(pending.items()))
            real_ledger, real_roll_up = sink._insert_ledger, sink._roll_up

            def ledger(*args: Any) -> Any:
                seconds, result = _timed(lambda: real_ledger(*args))
                out["ledger"] += seconds
                return result

            def roll_up(token: str) -> None:
                out["rollups"] += _timed(lambda: real_roll_up(token))[0]

            sink._insert_ledger = ledger  # type: ignore[method-assign,assignment]
            sink._roll_up = roll_up  # type: ignore[method-assign,assignment]

            def insert() -> None:
                for block in blocks:
                    sink._insert(block)

            total = _timed(insert)[0]
            out["insert"] = total - out["ledger"] - out["rollups"]
            [landed] = wh.query("SELECT count() AS n FROM {db:Identifier}.event_ledger", {"db": settings.database})
            assert landed["n"] == len(blobs), landed
        finally:
            wh.close()
    return out


def _model_stages(values: list[bytes]) -> dict[str, float]:
    """Seconds of the model path's steps over all of `values`."""
    from api import sink as sinkmod
    from api.warehouse.chdb import encode_json_compact_columns
    from schemas import codec
    from schemas.events import PricedEvent

    out: dict[str, float] = {}
    out["model_decode"], priced = _timed(lambda: [codec.decode(PricedEvent, v) for v in values])
    out["model_row"], rows = _timed(lambda: [sinkmod.priced_event_row(p, "t", 0, i) for i, p in enumerate(priced)])
    out["model_encode"] = _timed(lambda: encode_json_compact_columns(rows))[0]
    return out


def _fast_stages(values: list[bytes]) -> dict[str, float]:
    """Seconds of the fast path's steps over all of `values`."""
    from api import sink as sinkmod
    from api.warehouse.chdb import encode_json_compact_columns

    out: dict[str, float] = {}
    out["fast_loads"], docs = _timed(lambda: [orjson.loads(v) for v in values])
    out["fast_check"], ok = _timed(lambda: [sinkmod.fast_shape_ok(d) for d in docs])
    assert all(ok)
    out["fast_row"], fast = _timed(lambda: [sinkmod.fast_row(d, "t", 0, i) for i, d in enumerate(docs)])
    out["fast_encode"] = _timed(lambda: encode_json_compact_columns(fast))[0]
    return out


def run(n: int = 20_000, repeats: int = 3) -> dict[str, Any]:
    blobs = priced_blobs(n)
    values = [v for _, v in blobs]
    gc.collect()
    gc.freeze()  # as Sink.run does: what lives as long as the process stays out of full passes
    runs = []
    for _ in range(repeats):
        # one stage's objects gone before the next: the collector would walk them all
        gc.collect()
        model = _model_stages(values)
        gc.collect()
        fast = _fast_stages(values)
        gc.collect()
        runs.append({**model, **fast, **_sink_stages(blobs)})
    us = {name: round(median([r[name] for r in runs]) / n * 1e6, 1) for name in runs[0]}
    us["model_path"] = round(us["model_decode"] + us["model_row"] + us["model_encode"], 1)
    us["fast_path"] = round(us["fast_loads"] + us["fast_check"] + us["fast_row"] + us["fast_encode"], 1)
    us["sink_total"] = round(us["accept"] + us["insert"] + us["ledger"] + us["rollups"], 1)
    return {
        "events": n,
        "repeats": repeats,
        "bytes_per_event": round(sum(map(len, values)) / n),
        "us_per_event": us,
        "ceiling_events_per_s": round(1e6 / us["sink_total"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.events, args.repeats), indent=2))


if __name__ == "__main__":
    main()
