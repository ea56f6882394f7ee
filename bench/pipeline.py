"""Pipeline throughput: validate -> dedupe -> price -> budget (the worker), and on into chDB
(the sink), against a bare confluent-kafka consume loop over the same topic in the same run.

N events are produced to `cost-events` before anything consumes them. Then the worker
(`python -m processors.worker`, exactly-once as deployed, with a session token cap so every
event goes through the budget book) and the sink (bench/sink_proc.py, its own chDB folder)
start together. This process watches them without reading what they write, so that the
measuring takes no share of the two cores worth a figure: a read_uncommitted reader of
`priced-events` that stops at the first priced event written, and a poll of the worker group's
committed offsets on `cost-events` every 20 ms. Under exactly-once those offsets commit in the
transaction that makes the batch's priced events visible, so they reach N when the last priced
event does. (Until 2026-11-29 two readers read all of `priced-events`, one at each isolation
level: 3-4 µs of CPU an event in this process and about as much in the broker.) Once the run is
over, a read_committed reader counts the priced events visible: exactly N, none twice.

- worker events/s = N / (worker group committed N - first priced event written)
- end to end events/s = N / (last event in the warehouse's ledger and rollups - first priced event written)
- baseline events/s = N / (last - first message) of a bare consume loop over `cost-events`

Each run also lists the worker's commits as they were seen (`worker_commits`: seconds after the
first priced event, events committed), which shows what the last commit waited for.

Peak RSS (VmHWM) of both processes is read once the last event is in.

    .venv/bin/python -m bench.pipeline [--events 50000] [--profile] [--team-budget]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from agentledger.settings import Settings
from bench.common import (
    RESULTS,
    Child,
    StageError,
    ThreadCpu,
    bench_settings,
    broker_pid,
    cpu_seconds,
    ensure_broker,
    loadavg,
    median,
    pin_threads,
    schedstat,
    start_worker,
)
from processors.policies import publish_policy
from schemas.budgets import BudgetPolicy, Scope
from schemas.events import derive_event_id
from schemas.topics import COST_EVENTS, PRICED_EVENTS, SCOPE_USAGE

# priced by genai-prices, so no event takes the unpriced path
MODELS = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("openai", "o3"),
    ("anthropic", "claude-3-5-sonnet-latest"),
    ("anthropic", "claude-3-5-haiku-latest"),
)
AGENT_TYPES = ("pr-reviewer", "support", "research", "coder")
TEAMS = ("platform", "growth", "search", "infra", "billing")
TOKEN_CAP_NEVER_REACHED = 100_000_000  # the schema's maximum


def make_events(n: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(key, value) of n valid llm_call and tool_call events over n/20 sessions, as the hook
    sends them (JSON, keyed by session id)."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    sessions = max(1, n // 20)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    out = []
    for i in range(n):
        s = i % sessions
        session_id = f"s-{run}-{s}"
        step = i // sessions
        event: dict[str, Any] = {
            "schema_version": 1,
            "occurred_at": now,
            "session_id": session_id,
            "workflow_id": session_id,
            "step": step,
            "agent_type": AGENT_TYPES[s % len(AGENT_TYPES)],
            "team": TEAMS[s % len(TEAMS)],
            "project": f"project-{s % 17}",
            "customer": f"customer-{s % 41}",
        }
        if i % 10 == 9:
            event.update(kind="tool_call", step_name="tool", tool_name="web_search", duration_ms=rng.randint(50, 3000))
        else:
            provider, model = MODELS[s % len(MODELS)]
            event.update(
                kind="llm_call",
                step_name="llm",
                provider=provider,
                model=model,
                input_tokens=int(rng.lognormvariate(7, 1)) + 1,
                output_tokens=int(rng.lognormvariate(5.5, 1)) + 1,
                cache_read_tokens=rng.choice((0, 0, 0, 512, 2048)),
                latency_ms=rng.randint(200, 20_000),
            )
        event["event_id"] = derive_event_id(session_id, step, event["step_name"])
        out.append((session_id.encode(), orjson.dumps(event)))
    return out


def produce_all(settings: Settings, records: list[tuple[bytes, bytes]]) -> float:
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "partitioner": "murmur2_random",  # as the hook
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    topic = settings.topic(COST_EVENTS.suffix)
    started = time.perf_counter()
    for key, value in records:
        producer.produce(topic, value, key)
        producer.poll(0)
    if producer.flush(120):
        raise StageError("pre-producing the events timed out")
    return time.perf_counter() - started


def _assigned(settings: Settings, topic: str, isolation: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",  # never joined: partitions assigned
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "fetch.wait.max.ms": 50,
        }
    )
    meta = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.topics[topic].partitions])
    return consumer


def bare_consume(settings: Settings, n: int) -> dict[str, float]:
    """The baseline: a confluent-kafka consumer group (as the worker is) reading the same N
    events, touching each value; events/s from the first message to the last."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([settings.topic(COST_EVENTS.suffix)])
    seen = 0
    size = 0
    first = last = 0.0
    deadline = time.monotonic() + 120
    try:
        while seen < n:
            if time.monotonic() > deadline:
                raise StageError(f"bare consumer saw {seen} of {n} events in 120 s")
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error():
                    continue
                if not seen:
                    first = time.perf_counter()
                seen += 1
                size += len(msg.value() or b"")
            last = time.perf_counter()
    finally:
        consumer.close()
    return {"events_per_s": round(n / (last - first)), "seconds": round(last - first, 3), "mean_bytes": size // n}


class FirstWritten(threading.Thread):
    """The time the first priced event was written (read_uncommitted); reads nothing after it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True, name="first-written")
        self.consumer = _assigned(settings, settings.topic(PRICED_EVENTS.suffix), "read_uncommitted")
        self.first: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.first is None:
                msg = self.consumer.poll(0.05)
                if msg is not None and not msg.error():
                    self.first = time.time()
        finally:
            self.consumer.close()


class WorkerCommitted(threading.Thread):
    """The time the worker's group had committed `target` offsets on `cost-events`, polled every
    20 ms (the worker's transactions commit their input offsets with their outputs)."""

    def __init__(self, settings: Settings, target: int) -> None:
        super().__init__(daemon=True, name="worker-committed")
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.worker_id})
        topic = settings.topic(COST_EVENTS.suffix)
        meta = self.consumer.list_topics(topic, timeout=10)
        self.partitions = [TopicPartition(topic, p) for p in meta.topics[topic].partitions]
        self.target = target
        self.committed = 0
        self.steps: list[tuple[float, int]] = []
        """(time, offsets committed) at each change."""
        self.done: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.done is None:
                offsets = self.consumer.committed(self.partitions, timeout=10)
                now = time.time()
                committed = sum(max(tp.offset, 0) for tp in offsets)
                if committed != self.committed:
                    self.steps.append((now, committed))
                self.committed = committed
                if self.committed >= self.target:
                    self.done = now
                self.stop.wait(0.02)
        finally:
            self.consumer.close()


def visible_records(settings: Settings, topic: str, timeout: float = 60.0) -> int:
    """Records a read_committed consumer reads from `topic`, up to its end offsets now."""
    consumer = _assigned(settings, topic, "read_committed")
    try:
        partitions = consumer.assignment()
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in partitions}

        def at_end() -> bool:  # a partition not read yet is at -1001
            return all(
                tp.offset >= ends[tp.partition] or not ends[tp.partition] for tp in consumer.position(partitions)
            )

        seen = 0
        deadline = time.monotonic() + timeout
        while not at_end():
            if time.monotonic() > deadline:
                raise StageError(f"counting the visible records of {topic}: {seen} after {timeout} s, not at the end")
            seen += sum(1 for msg in consumer.consume(5000, timeout=0.2) if not msg.error())
        return seen
    finally:
        consumer.close()


def changelog_records(settings: Settings) -> dict[str, int]:
    """Records written to each of the worker's changelog topics (end offsets; each
    transaction adds one commit marker per partition, so slightly over)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "bench-offsets"})
    try:
        out = {}
        for name, meta in consumer.list_topics(timeout=10).topics.items():
            if name.startswith(f"{settings.worker_id}-") and name.endswith("-changelog"):
                total = 0
                for p in meta.partitions:
                    low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                    total += high - low
                out[name.removeprefix(f"{settings.worker_id}-").removesuffix("-changelog")] = total
        return out
    finally:
        consumer.close()


def topic_records(settings: Settings, topic: str) -> int:
    """Records in a topic (end offsets; transaction markers included, so slightly over)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "bench-offsets"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions)
    finally:
        consumer.close()


WORKER_CPUS, OTHER_CPUS = {0}, {1}
"""With `pin`: the worker's core, and the one shared by the sink, the broker and this process."""


@contextlib.contextmanager
def pinned(pin: bool, broker: int | None) -> Iterator[tuple[set[int] | None, set[int] | None]]:
    """(worker cpus, sink cpus) for the children; with `pin`, the broker's threads and this
    process's are on OTHER_CPUS meanwhile, every CPU again after."""
    if not pin:
        yield None, None
        return
    every = os.sched_getaffinity(0)
    if not every >= WORKER_CPUS | OTHER_CPUS:
        raise StageError(f"pinning needs CPUs {sorted(WORKER_CPUS | OTHER_CPUS)}; this process has {sorted(every)}")
    for pid in (os.getpid(), broker):
        if pid is not None:
            pin_threads(pid, OTHER_CPUS)
    try:
        yield WORKER_CPUS, OTHER_CPUS
    finally:
        for pid in (os.getpid(), broker):
            if pid is not None:
                with contextlib.suppress(OSError):
                    pin_threads(pid, every)


def run_once(
    bootstrap: str,
    run_tag: str,
    n: int,
    *,
    profile: Path | None = None,
    team_budget: bool = False,
    pin: bool = False,
) -> dict[str, Any]:
    """One run; with `pin`, the worker alone on one core (WORKER_CPUS) and everything else
    (sink, broker, this process) on the other."""
    with (
        pinned(pin, broker_pid(bootstrap)) as (worker_cpus, sink_cpus),
        bench_settings(bootstrap, run_tag, "p", session_token_cap=TOKEN_CAP_NEVER_REACHED) as settings,
    ):
        if team_budget:
            # every event's usage also goes through scope-usage to the team budget's owner
            team = BudgetPolicy(policy_id="bench-team", scope=(Scope.TEAM,), limit_tokens=TOKEN_CAP_NEVER_REACHED)
            publish_policy(settings, team)
        records = make_events(n)
        produce_s = produce_all(settings, records)
        bare = [bare_consume(settings, n) for _ in range(3)]

        uncommitted = FirstWritten(settings)
        committed = WorkerCommitted(settings, n)
        uncommitted.start()
        committed.start()
        sink_out = Path(f"/tmp/agentledger-bench-sink-{uuid.uuid4().hex[:8]}.json")
        if profile is None:
            worker = start_worker(settings, cpus=worker_cpus)
        else:
            argv = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "processors.worker"]
            worker = Child("worker", argv, settings, cpus=worker_cpus)
        sink_argv = [sys.executable, "-m", "bench.sink_proc", str(n), str(sink_out)]
        sink = Child("sink", sink_argv, settings, cpus=sink_cpus)
        started = time.time()
        worker_hwm: int | None = None
        cpu_at_first: tuple[Any, ...] | None = None
        cpu_at_worker_done: tuple[Any, ...] | None = None
        broker = broker_pid(bootstrap)
        sink_threads = ThreadCpu(sink.pid)
        sampled_at = 0.0

        def cpu_now() -> tuple[Any, ...]:
            """(time, worker, sink, broker, this process's CPU seconds, the worker loop's schedstat)"""
            return (
                time.time(),
                cpu_seconds(worker.pid),
                cpu_seconds(sink.pid),
                cpu_seconds(broker) if broker else None,
                time.process_time(),
                schedstat(worker.pid),
            )

        try:
            deadline = time.monotonic() + max(180.0, n / 200)
            while committed.done is None or not sink_out.exists():
                if time.monotonic() > deadline:
                    raise StageError(
                        f"pipeline stalled: first written {uncommitted.first}, {committed.committed} committed, "
                        f"sink done={sink_out.exists()}\nworker:\n{worker.tail()}\nsink:\n{sink.tail()}"
                    )
                worker.check_alive()
                sink.check_alive()
                if cpu_at_first is None and uncommitted.first is not None:
                    cpu_at_first = cpu_now()
                    sink_threads.sample()
                if cpu_at_worker_done is None and committed.done is not None:
                    cpu_at_worker_done = cpu_now()
                if cpu_at_first is not None and time.monotonic() - sampled_at > 0.25:
                    sink_threads.sample()
                    sampled_at = time.monotonic()
                time.sleep(0.05)
            cpu_at_done = cpu_now()
            sink_threads.sample()
            if cpu_at_worker_done is None:
                cpu_at_worker_done = cpu_at_done
            time.sleep(1.0)  # anything beyond N would be a duplicate (counted below)
            worker_hwm = worker.hwm_kib()
            sink_result = json.loads(sink_out.read_text())
        finally:
            worker_rc = worker.stop()
            sink_rc = sink.stop()
            uncommitted.stop.set()
            committed.stop.set()
            uncommitted.join(5)
            committed.join(5)
            sink_out.unlink(missing_ok=True)
        visible = visible_records(settings, settings.topic(PRICED_EVENTS.suffix))
        changelog = changelog_records(settings)
        scope_usage = topic_records(settings, settings.topic(SCOPE_USAGE.suffix))
        cpu: dict[str, Any] = {}
        if cpu_at_first is not None and cpu_at_worker_done is not None:
            # CPU from the first priced event to the last row in the warehouse, every process on
            # the two cores: the worker, the sink, the broker, and this one (its two watchers)
            wall = cpu_at_done[0] - cpu_at_first[0]
            total = 0.0
            for i, name in ((1, "worker"), (2, "sink"), (3, "broker"), (4, "bench_watchers")):
                a, b = cpu_at_first[i], cpu_at_done[i]
                if a is not None and b is not None and wall > 0:
                    total += b - a
                    cpu[f"{name}_cpu_us_per_event"] = round((b - a) / n * 1e6)
                    cpu[f"{name}_cpu_utilisation"] = round((b - a) / wall, 2)
            cpu["total_cpu_us_per_event"] = round(total / n * 1e6)
            # the event loop's thread while the worker runs: on a core, runnable but waiting for
            # one, or asleep (I/O)
            wall = cpu_at_worker_done[0] - cpu_at_first[0]
            s0, s1 = cpu_at_first[5], cpu_at_worker_done[5]
            if s0 is not None and s1 is not None and wall > 0:
                running, queued = s1[0] - s0[0], s1[1] - s0[1]
                cpu["loop_thread_running"] = round(running / wall, 2)
                cpu["loop_thread_waiting_for_cpu"] = round(queued / wall, 2)
                cpu["loop_thread_idle"] = round(max(0.0, 1 - (running + queued) / wall), 2)
        if cpu_at_first is not None:
            # where the sink's CPU goes: its Python thread (which also runs part of each chDB
            # query), chDB's query threads, its background merges, everything else
            split = sink_threads.split()
            groups = {"main": "python", "ThreadPool": "chdb_threadpool", "MergeMutate": "chdb_merges"}
            out = dict.fromkeys([*groups.values(), "other"], 0.0)
            for name, seconds in split.items():
                out[groups.get(name, "other")] += seconds
            for name, seconds in out.items():
                cpu[f"sink_{name}_us_per_event"] = round(seconds / n * 1e6, 1)
        if profile is None:
            worker.cleanup()
        sink.cleanup()
        assert uncommitted.first is not None and committed.done is not None
        t0 = uncommitted.first
        worker_s = committed.done - t0
        e2e_s = sink_result["done_at"] - t0
        return {
            "events": n,
            "team_budget": team_budget,
            "pinned": pin,
            "produce_s": round(produce_s, 2),
            "bare_consume": bare,
            "bare_events_per_s": round(median([b["events_per_s"] for b in bare])),
            "startup_s": round(t0 - started, 2),
            "worker_events_per_s": round(n / worker_s),
            "worker_s": round(worker_s, 2),
            "e2e_events_per_s": round(n / e2e_s),
            "e2e_s": round(e2e_s, 2),
            "worker_commits": [(round(t - t0, 2), c) for t, c in committed.steps],
            "priced_visible": visible,
            "exactly_n_visible": visible == n,
            "warehouse": {k: sink_result[k] for k in ("counts", "rollup_daily_calls", "batches")},
            "cpu": cpu,
            "changelog_records_per_event": {k: round(v / n, 2) for k, v in changelog.items()},
            "scope_usage_records_per_event": round(scope_usage / n, 3),
            "worker_peak_rss_mib": round(worker_hwm / 1024, 1) if worker_hwm else None,
            "sink_peak_rss_mib": round(sink_result["vm_hwm_kib"] / 1024, 1) if sink_result["vm_hwm_kib"] else None,
            "worker_exit": worker_rc,
            "sink_exit": sink_rc,
            "loadavg": loadavg(),
        }


def run(bootstrap: str, run_tag: str, n: int, repeats: int = 1, pin: bool = False) -> dict[str, Any]:
    """`repeats` runs, each with fresh topics; medians of the rates and peaks."""
    runs = [run_once(bootstrap, run_tag, n, pin=pin) for _ in range(repeats)]

    def med(key: str) -> float:
        return median([r[key] for r in runs if r[key] is not None])

    return {
        "events": n,
        "repeats": repeats,
        "pinned": pin,
        "worker_events_per_s": round(med("worker_events_per_s")),
        "e2e_events_per_s": round(med("e2e_events_per_s")),
        "bare_events_per_s": round(med("bare_events_per_s")),
        "worker_peak_rss_mib": med("worker_peak_rss_mib"),
        "sink_peak_rss_mib": med("sink_peak_rss_mib"),
        "exactly_n_visible": all(r["exactly_n_visible"] for r in runs),
        "cpu": {
            k: median([r["cpu"][k] for r in runs if k in r["cpu"]]) for k in sorted({k for r in runs for k in r["cpu"]})
        },
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--profile", action="store_true", help="run the worker under cProfile")
    parser.add_argument("--team-budget", action="store_true", help="also a team budget (scope-usage path)")
    parser.add_argument(
        "--pin", action="store_true", help="the worker alone on CPU 0; sink, broker and this process on CPU 1"
    )
    args = parser.parse_args()
    ensure_broker(args.bootstrap)
    profile = RESULTS / "worker.prof" if args.profile else None
    result = run_once(
        args.bootstrap, uuid.uuid4().hex[:6], args.events, profile=profile, team_budget=args.team_budget, pin=args.pin
    )
    print(json.dumps(result, indent=2))
    if profile is not None:
        import pstats

        stats = pstats.Stats(str(profile))
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(35)


if __name__ == "__main__":
    main()
