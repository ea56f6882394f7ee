"""Per-call overhead of `Session.record_llm_call` in the agent thread, Kafka up and down.

Prints p50 / p99 / max in microseconds, beside the baseline of a bare confluent-kafka
`Producer.produce()` of the same encoded event in the same run, and the hook side of the
signal path (kill Signal produced -> BudgetExceeded raised). Not a test.

    .venv/bin/python -m bench.hook_overhead [--calls 20000] [--kills 200] [--bootstrap 127.0.0.1:19092]

`run()` returns the same figures for bench/run.py.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from confluent_kafka import Producer

import ingest
from agentledger.kafka_admin import ensure_topics
from agentledger.settings import Settings
from ingest.delivery import encode_event, producer_config
from schemas.events import derive_event_id


def summary_us(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    return {
        "p50_us": round(s[len(s) // 2] / 1000, 2),
        "p99_us": round(s[int(len(s) * 0.99)] / 1000, 2),
        "max_us": round(s[-1] / 1000, 1),
        "mean_us": round(statistics.fmean(s) / 1000, 2),
        "n": len(s),
    }


def percentiles(samples_ns: list[int]) -> str:
    s = sorted(samples_ns)
    p50 = s[len(s) // 2] / 1000
    p99 = s[int(len(s) * 0.99)] / 1000
    return f"p50 {p50:7.2f} µs   p99 {p99:7.2f} µs   max {s[-1] / 1000:9.1f} µs   mean {statistics.fmean(s) / 1000:6.2f} µs"


def paced(calls: int, fn) -> list[int]:
    """Time each call; pause 2 ms every 100 calls so the delivery thread keeps up (about
    50,000 calls/s, far above any real agent) and the queue never fills."""
    out: list[int] = []
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        fn(i)
        out.append(clock() - t0)
        if i % 100 == 99:
            time.sleep(0.002)
    return out


def bench_hook(label: str, bootstrap: str, prefix: str, calls: int, up: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as spool:
        ingest.configure(
            bootstrap_servers=bootstrap,
            topic_prefix=prefix,
            spool_dir=spool,
            status_wait_s=5.0 if up else 0.1,
            exit_timeout_s=1.0,
        )
        s = ingest.session(session_id=f"bench-{uuid.uuid4().hex[:6]}", agent_type="bench", team="t", project="p")
        s.check()  # the one-time wait for the session-status snapshot is not per-call overhead
        for _ in range(2000):
            s.record_llm_call("openai", "gpt-4o", 1000, 200)
        ingest.flush(30 if up else 0.5)

        def call(i: int) -> None:
            s.record_llm_call("openai", "gpt-4o", input_tokens=1000 + i, output_tokens=200, latency_ms=800)

        samples = paced(calls, call)
        started = time.monotonic()
        flushed = ingest.flush(60 if up else 1)
        drain = time.monotonic() - started
        stats = ingest.stats()
        print(f"record_llm_call, {label:10s} {percentiles(samples)}")
        print(
            f"    flushed={flushed} in {drain:.2f}s  delivered={stats.delivered} spooled={stats.spooled} "
            f"pending={stats.pending} queue_full={stats.queue_full}"
        )
        ingest.close(timeout=1.0)
        return {
            **summary_us(samples),
            "flushed": flushed,
            "drain_s": round(drain, 2),
            "delivered": stats.delivered,
            "spooled": stats.spooled,
            "pending": stats.pending,
            "queue_full": stats.queue_full,
        }


def bench_bare_produce(label: str, bootstrap: str, topic: str, calls: int) -> dict[str, Any]:
    config = {**producer_config(ingest.IngestConfig(bootstrap_servers=bootstrap)), "message.timeout.ms": 30_000}
    config.pop("logger", None)
    producer = Producer(config)
    key, value = encode_event(
        {
            "event_id": derive_event_id("bench", 0, "llm"),
            "kind": "llm_call",
            "occurred_at": datetime.now(UTC),
            "session_id": "bench",
            "workflow_id": "bench",
            "step": 0,
            "step_name": "llm",
            "agent_type": "bench",
            "team": "t",
            "project": "p",
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 1000,
            "output_tokens": 200,
            "latency_ms": 800,
        }
    )

    def call(i: int) -> None:
        producer.produce(topic, value, key)
        producer.poll(0)

    samples = paced(calls, call)
    print(f"bare Producer.produce(), {label:10s} {percentiles(samples)}")
    producer.purge()
    producer.flush(1)
    return summary_us(samples)


def bench_signal_latency(bootstrap: str, prefix: str, kills: int) -> dict[str, Any]:
    """Time from producing a kill Signal (acks=1, linger 0) to BudgetExceeded in the agent."""
    from schemas.budgets import Action, Scope, Signal
    from schemas.codec import encode

    with tempfile.TemporaryDirectory() as spool:
        ingest.configure(bootstrap_servers=bootstrap, topic_prefix=prefix, spool_dir=spool, status_wait_s=5.0)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": 1})
        topic = prefix + "signals"
        samples: list[int] = []
        for i in range(kills + 5):
            session_id = f"kill-{uuid.uuid4().hex[:8]}"
            s = ingest.session(session_id=session_id, agent_type="bench")
            s.check()
            signal = Signal(
                signal_id=f"{session_id}:kill",
                session_id=session_id,
                action=Action.KILL,
                policy_id="bench",
                scope=(Scope.SESSION,),
                scope_value=session_id,
                limit_tokens=1,
                spent_tokens=2,
                spent_cost=Decimal(0),
                reason="bench",
                issued_at=datetime.now(UTC),
            )
            value = encode(signal)
            t0 = time.perf_counter_ns()
            producer.produce(topic, value, session_id.encode())
            producer.poll(0)
            while True:
                try:
                    s.check()
                except ingest.BudgetExceeded:
                    break
                time.sleep(0.0002)
            if i >= 5:  # warm-up
                samples.append(time.perf_counter_ns() - t0)
            time.sleep(0.02)
        producer.flush(5)
        print(f"kill signal -> BudgetExceeded ({kills} kills) {percentiles(samples)}")
        ingest.close(timeout=1.0)
        return summary_us(samples)


def run(bootstrap: str, prefix: str, calls: int, kills: int) -> dict[str, Any]:
    """Every figure of this benchmark (Kafka up and down), on topics under `prefix` (which the
    caller creates and deletes)."""
    dead = dead_address()
    topic = prefix + "cost-events"
    return {
        "calls": calls,
        "bare_up": bench_bare_produce("kafka up", bootstrap, topic, calls),
        "hook_up": bench_hook("kafka up", bootstrap, prefix, calls, up=True),
        "bare_down": bench_bare_produce("kafka down", dead, topic, calls),
        "hook_down": bench_hook("kafka down", dead, prefix, calls, up=False),
        "kill_to_exception": bench_signal_latency(bootstrap, prefix, kills),
    }


def dead_address() -> str:
    """An address where nothing listens: Kafka down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--kills", type=int, default=200)
    args = parser.parse_args()
    from bench.common import delete_topics

    settings = Settings(kafka_bootstrap=args.bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.")
    ensure_topics(settings)
    try:
        dead = dead_address()
        print(f"{args.calls} calls each; kafka up at {args.bootstrap}, down at {dead} (nothing listens)")
        bench_bare_produce("kafka up", args.bootstrap, settings.topic("cost-events"), args.calls)
        bench_hook("kafka up", args.bootstrap, settings.topic_prefix, args.calls, up=True)
        bench_bare_produce("kafka down", dead, settings.topic("cost-events"), args.calls)
        bench_hook("kafka down", dead, settings.topic_prefix, args.calls, up=False)
        bench_signal_latency(args.bootstrap, settings.topic_prefix, args.kills)
    finally:
        delete_topics(settings)


if __name__ == "__main__":
    main()
