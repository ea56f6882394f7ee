"""CPU per event of `price_event` on 10,000 mixed events, and a digest of every result.

The digest covers cost, list cost, the input/output split, source and version of each
PricedEvent, so two runs (before and after a pricing change) that print the same digest
priced every event identically.

    .venv/bin/python -m bench.price_cache [--events 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from processors.pricing import price_event
from schemas.events import CostEvent

# list-priced, tiered (context thresholds), time-of-day priced, a gateway id, unknown
MODELS = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("openai", "o3"),
    ("anthropic", "claude-3-5-sonnet-latest"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("anthropic", "claude-sonnet-4-5"),
    ("google", "gemini-2.5-pro"),
    ("google", "gemini-2.5-flash"),
    ("deepseek", "deepseek-chat"),
    ("my-gateway", "gpt-4.1"),
    ("acme", "acme-9000"),
)
START = datetime(2025, 3, 1, tzinfo=UTC)


def make_events(n: int, seed: int = 11) -> list[CostEvent]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        values: dict[str, Any] = {
            "event_id": f"{i:032x}",
            "occurred_at": START + timedelta(minutes=rng.randrange(60 * 24 * 600)),
            "session_id": f"s{i % 500}",
            "workflow_id": "wf",
            "step": i,
            "agent_type": "bench",
        }
        if i % 10 == 9:
            values.update(kind="tool_call", step_name="tool", tool_name="web_search", tool_fee="0.01")
        else:
            provider, model = MODELS[i % len(MODELS)]
            output = int(rng.lognormvariate(5.5, 1)) + 1
            values.update(
                kind="llm_call",
                step_name="llm",
                provider=provider,
                model=model,
                input_tokens=int(rng.lognormvariate(7, 1.5)) + 1,
                output_tokens=output,
                cache_read_tokens=rng.choice((0, 0, 0, 512, 2048, 250_000)),
                cache_write_tokens=rng.choice((0, 0, 0, 1024)),
                reasoning_tokens=rng.choice((0, 0, output // 2)),
            )
        events.append(CostEvent(**values))
    return events


def run(n: int = 10_000, repeats: int = 5) -> dict[str, Any]:
    events = make_events(n)
    now = datetime(2026, 11, 29, tzinfo=UTC)
    times = []
    priced = []
    for _ in range(repeats):
        started = time.perf_counter()
        priced = [price_event(e, now=now) for e in events]
        times.append(time.perf_counter() - started)
    digest = hashlib.sha256()
    for p in priced:
        digest.update(
            f"{p.cost}|{p.list_cost}|{p.input_cost}|{p.output_cost}|{p.price_source}|{p.price_version}|"
            f"{p.unpriced}\n".encode()
        )
    times.sort()
    return {
        "events": n,
        "us_per_event_best": round(times[0] / n * 1e6, 1),
        "us_per_event_median": round(times[len(times) // 2] / n * 1e6, 1),
        "results_sha256": digest.hexdigest()[:16],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(run(args.events, args.repeats))


if __name__ == "__main__":
    main()
