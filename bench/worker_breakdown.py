"""Where a worker's time goes per event, without Kafka and without a profiler's distortion.

Runs the worker's own `LedgerApp.handle_batch` over the pipeline benchmark's events in
batches of 1,000, with the sends to Kafka replaced by a no-op, and times its parts one by
one on the same events: validation (`parse_event`), pricing (`Pricer.price`), encoding the
PricedEvent. What `handle_batch` costs beyond those is dedupe + budget + bookkeeping. The
pipeline's measured rate minus this is what faust, aiokafka and the broker cost.

    .venv/bin/python -m bench.worker_breakdown [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
import types
import uuid
from datetime import UTC, datetime
from typing import Any

from agentledger.settings import Settings
from bench.common import median
from bench.pipeline import TOKEN_CAP_NEVER_REACHED, make_events


def _us(seconds: float, n: int) -> float:
    return round(seconds / n * 1e6, 1)


def run(n: int = 20_000, repeats: int = 3) -> dict[str, Any]:
    from processors.app import LedgerApp, parse_event
    from schemas.codec import encode

    tag = uuid.uuid4().hex[:6]
    # nothing here talks to Kafka: the clients are created but never used
    settings = Settings(
        topic_prefix=f"benchbd{tag}.", worker_id=f"benchbd-{tag}", session_token_cap=TOKEN_CAP_NEVER_REACHED
    )
    records = make_events(n)
    events = [
        types.SimpleNamespace(value=value, key=key, partition=i % 3, topic="cost-events", offset=i)
        for i, (key, value) in enumerate(records)
    ]
    now = datetime.now(UTC)

    parse_s, price_s, encode_s, batch_s = [], [], [], []
    for _ in range(repeats):
        # the collector off while a part is timed: a full pass over 20,000 live events landed in
        # whichever part happened to trigger it (pricing once measured more than the whole batch)
        gc.collect()
        gc.disable()
        started = time.perf_counter()
        parsed = [parse_event(v) for _, v in records]
        parse_s.append(time.perf_counter() - started)
        gc.enable()

        app = LedgerApp(settings)
        received = [e.model_copy(update={"received_at": now}) for e in parsed]  # type: ignore[union-attr]

        gc.collect()
        gc.disable()
        started = time.perf_counter()
        priced = [app.pricer.price(e, now) for e in received]
        price_s.append(time.perf_counter() - started)

        started = time.perf_counter()
        for p in priced:
            encode(p)
        encode_s.append(time.perf_counter() - started)
        gc.enable()

        async def no_send(*_args: Any, **_kwargs: Any) -> list[Any]:
            return []

        app._append_outbox = no_send  # type: ignore[method-assign]

        async def batches(app: Any = app) -> float:
            started = time.perf_counter()
            for i in range(0, n, 1000):
                await app.handle_batch(events[i : i + 1000])
            return time.perf_counter() - started

        batch_s.append(asyncio.run(batches()))
        app.signals._producer.flush(0)
        app.policies._consumer.close()

    parse_us, price_us, encode_us = (_us(median(x), n) for x in (parse_s, price_s, encode_s))
    batch_us = _us(median(batch_s), n)
    return {
        "events": n,
        "repeats": repeats,
        "handle_batch_us": batch_us,
        "validate_us": parse_us,
        "price_us": price_us,
        "encode_us": encode_us,
        "dedupe_budget_rest_us": round(batch_us - parse_us - price_us - encode_us, 1),
        "ceiling_events_per_s": round(1e6 / batch_us),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    print(json.dumps(run(args.events), indent=2))


if __name__ == "__main__":
    main()
