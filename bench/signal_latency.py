"""Signal latency: from recording the budget-crossing call through the SDK hook to
`BudgetExceeded` raised by `Session.check()` in the agent, over the whole real path
(hook delivery thread -> cost-events -> worker: validate, dedupe, price, budget -> signals ->
the hook's listener), against a raw Kafka round trip with the same librdkafka settings.

The worker runs with a per-session token cap (AGENTLEDGER_SESSION_TOKEN_CAP). Each session
records one call under the cap, then, timed, the call that crosses it; the agent thread then
polls `check()` every 0.2 ms. Sessions run one after another.

The baseline produces one message with the hook's producer settings (idempotent, acks=all,
linger.ms=2, lz4) and reads it with the hook's signal-listener settings (assigned partition,
fetch.wait.max.ms=10, read_uncommitted): the least any signal can take on this broker.

Each sample is also split into stages, from the records' own timestamps (wall clock; the Kafka
ones in ms): the hook handing the event to Kafka (its CreateTime), the worker's batch picking it
up (the signal's `issued_at`), the signal produced (its CreateTime), the hook's listener
applying it, and `check()` raising. The slowest samples are printed with their stages: that is
how the 50-100 ms pair about 4 s into every run was found (processors/fetching.py).

With `--transport http` the agent reaches only the API (served by uvicorn in this process,
chDB in a temporary folder): events go through POST /v1/events and the signal comes back
over GET /v1/signals/stream, the path of agents that cannot reach Kafka.

    .venv/bin/python -m bench.signal_latency [--sessions 100] [--transport kafka|http]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import ingest
from agentledger.kafka_admin import wait_for_group
from agentledger.settings import Settings
from bench.common import StageError, bench_settings, dist, ensure_broker, free_port, loadavg, start_worker
from ingest.delivery import producer_config
from ingest.signals import SessionGuards
from schemas.topics import COST_EVENTS, SIGNALS

TOKEN_CAP = 10_000
WARMUP = 5
STAGES = ("hook_to_kafka", "kafka_to_worker", "worker_to_signal", "signal_to_listener", "listener_to_check")
SLOWEST = 5


@dataclass(slots=True)
class Sample:
    session_id: str
    at: float  # seconds since the first session
    recorded: float  # wall clock when the crossing call was recorded
    raised: float  # wall clock when check() raised
    ms: float


def read_topic(settings: Settings, topic: str) -> list[tuple[bytes, int]]:
    """(value, CreateTime ms) of every record in `topic`, read to its end."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        out: list[tuple[bytes, int]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            positions = consumer.position([TopicPartition(topic, p) for p in ends])
            if all(tp.offset >= ends[tp.partition] for tp in positions):
                break
            for msg in consumer.consume(1000, timeout=0.2):
                if not msg.error():
                    out.append((msg.value() or b"", msg.timestamp()[1]))
        return out
    finally:
        consumer.close()


def stages(settings: Settings, samples: list[Sample], received: dict[str, float]) -> dict[str, Any]:
    """Each sample's stages in ms (see the module's docstring): their distributions, and the slowest
    samples with theirs."""
    produced: dict[str, float] = {}  # session -> CreateTime of its last cost event (the crossing one)
    for value, ts in read_topic(settings, settings.topic(COST_EVENTS.suffix)):
        produced[orjson.loads(value)["session_id"]] = ts / 1000
    signalled: dict[str, tuple[float, float]] = {}  # session -> (issued_at, CreateTime) of its first signal
    for value, ts in read_topic(settings, settings.topic(SIGNALS.suffix)):
        signal = orjson.loads(value)
        issued = datetime.fromisoformat(signal["issued_at"]).timestamp()
        signalled.setdefault(signal["session_id"], (issued, ts / 1000))
    rows = []
    for s in samples:
        if s.session_id not in produced or s.session_id not in signalled or s.session_id not in received:
            continue
        issued, sent = signalled[s.session_id]
        marks = (s.recorded, produced[s.session_id], issued, sent, received[s.session_id], s.raised)
        rows.append((s, [round((b - a) * 1000, 1) for a, b in itertools.pairwise(marks)]))
    if not rows:
        return {}
    by_stage = {name: dist([r[1][i] for r in rows], digits=1) for i, name in enumerate(STAGES)}
    slowest = sorted(rows, key=lambda r: -r[0].ms)[:SLOWEST]
    return {
        "stages_ms": by_stage,
        "slowest": [
            {"at_s": round(s.at, 2), "ms": round(s.ms, 1), **dict(zip(STAGES, v, strict=True))} for s, v in slowest
        ],
    }


def raw_round_trip(settings: Settings, n: int) -> dict[str, float]:
    topic = settings.topic("roundtrip")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        future.result(timeout=30)
    pconf = producer_config(ingest.IngestConfig(bootstrap_servers=settings.kafka_bootstrap))
    pconf.pop("logger", None)
    producer = Producer(pconf)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"bench-rt-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "fetch.error.backoff.ms": 50,
            "isolation.level": "read_uncommitted",
            "socket.nagle.disable": True,
        }
    )
    producer.produce(topic, b"warm", b"k")
    producer.flush(10)
    _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.assign([TopicPartition(topic, 0, high)])
    samples: list[float] = []
    try:
        for i in range(n + WARMUP):
            t0 = time.perf_counter()
            producer.produce(topic, b"x" * 400, b"session")
            producer.poll(0)
            deadline = t0 + 5
            while True:
                msg = consumer.poll(0.1)
                if msg is not None and not msg.error():
                    break
                if time.perf_counter() > deadline:
                    raise StageError("raw round trip: message not consumed within 5 s")
            if i >= WARMUP:
                samples.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
    finally:
        consumer.close()
        producer.flush(5)
    return {**dist(samples), "samples": [round(x, 2) for x in samples]}


def hook_to_exception(settings: Settings, sessions: int, **hook_config: Any) -> dict[str, Any]:
    samples: list[float] = []
    slow: list[tuple[float, float]] = []
    timed: list[Sample] = []
    missed = 0
    t_start = time.perf_counter()
    received: dict[str, float] = {}  # session -> wall clock when the listener applied its first signal
    apply_signal = SessionGuards.apply_signal

    def noting_apply_signal(guards: SessionGuards, signal: Any) -> None:
        received.setdefault(signal.session_id, time.time())
        apply_signal(guards, signal)

    SessionGuards.apply_signal = noting_apply_signal  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as spool:
        ingest.configure(
            bootstrap_servers=settings.kafka_bootstrap,
            topic_prefix=settings.topic_prefix,
            spool_dir=spool,
            status_wait_s=5.0,
            exit_timeout_s=1.0,
            **hook_config,
        )
        try:
            run = uuid.uuid4().hex[:6]
            half = TOKEN_CAP // 2
            for i in range(sessions + WARMUP):
                s = ingest.session(session_id=f"sig-{run}-{i}", agent_type="bench-signal", team="t", project="p")
                s.check()
                s.record_llm_call("openai", "gpt-4o", input_tokens=half, output_tokens=100)
                time.sleep(0.03)  # the first call is through the worker: its state exists
                s.check()
                recorded = time.time()
                t0 = time.perf_counter()
                s.record_llm_call("openai", "gpt-4o", input_tokens=half, output_tokens=100)  # crosses the cap
                deadline = t0 + 5.0
                while True:
                    try:
                        s.check()
                    except ingest.BudgetExceeded:
                        elapsed = (time.perf_counter() - t0) * 1000
                        raised = time.time()
                        break
                    if time.perf_counter() > deadline:
                        elapsed = None
                        break
                    time.sleep(0.0002)
                if i < WARMUP:
                    continue
                if elapsed is None:
                    missed += 1
                else:
                    samples.append(elapsed)
                    timed.append(Sample(s.session_id, t0 - t_start, recorded, raised, elapsed))
                    if elapsed > 40:
                        slow.append((round(t0 - t_start, 2), round(elapsed, 1)))
                time.sleep(0.02)
        finally:
            ingest.close(timeout=2.0)
            SessionGuards.apply_signal = apply_signal  # type: ignore[method-assign]
    if not samples:
        raise StageError(f"no session of {sessions} got BudgetExceeded within 5 s")
    traced = stages(settings, timed, received) if hook_config.get("transport", "kafka") == "kafka" else {}
    return {
        **dist(samples),
        "missed": missed,
        "samples": [round(x, 2) for x in samples],
        "slow_over_40ms": slow,
        **traced,
    }


@contextlib.contextmanager
def served_api(settings: Settings) -> Iterator[str]:
    """The API (no sink) on a loopback port, auth disabled, for `--transport http`; its URL."""
    import uvicorn

    from api.app import create_app
    from api.signal_relay import end_signal_streams

    port = free_port()
    with tempfile.TemporaryDirectory() as chdb:
        api_settings = settings.model_copy(update={"chdb_path": Path(chdb), "auth": "disabled", "api_port": port})
        app = create_app(api_settings, with_sink=False)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name="bench-api", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise StageError("the API did not start")
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            end_signal_streams(app.state)
            server.should_exit = True
            thread.join(30)


def run(bootstrap: str, run_tag: str, sessions: int, transport: str = "kafka") -> dict[str, Any]:
    with bench_settings(bootstrap, run_tag, "s", session_token_cap=TOKEN_CAP) as settings:
        baseline = raw_round_trip(settings, sessions)
        worker = start_worker(settings)
        try:
            if not wait_for_group(settings, settings.worker_id, timeout=120):
                worker.check_alive()
                raise StageError(f"worker group not stable in 120 s:\n{worker.tail()}")
            if transport == "http":
                with served_api(settings) as url:
                    measured = hook_to_exception(settings, sessions, transport="http", api_url=url)
            else:
                measured = hook_to_exception(settings, sessions)
            worker.check_alive()
        finally:
            worker.stop()
        worker.cleanup()
    return {
        "transport": transport,
        "sessions": sessions,
        "token_cap": TOKEN_CAP,
        "signal_ms": measured,
        "round_trip_ms": baseline,
        "loadavg": loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--transport", choices=("kafka", "http"), default="kafka")
    args = parser.parse_args()
    ensure_broker(args.bootstrap)
    print(json.dumps(run(args.bootstrap, uuid.uuid4().hex[:6], args.sessions, args.transport), indent=2))


if __name__ == "__main__":
    main()
