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

With `--transport http` the agent reaches only the API (served by uvicorn in this process,
chDB in a temporary folder): events go through POST /v1/events and the signal comes back
over GET /v1/signals/stream, the path of agents that cannot reach Kafka.

    .venv/bin/python -m bench.signal_latency [--sessions 100] [--transport kafka|http]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import ingest
from agentledger.kafka_admin import wait_for_group
from agentledger.settings import Settings
from bench.common import StageError, bench_settings, dist, ensure_broker, free_port, loadavg, start_worker
from ingest.delivery import producer_config

TOKEN_CAP = 10_000
WARMUP = 5


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
    missed = 0
    t_start = time.perf_counter()
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
                t0 = time.perf_counter()
                s.record_llm_call("openai", "gpt-4o", input_tokens=half, output_tokens=100)  # crosses the cap
                deadline = t0 + 5.0
                while True:
                    try:
                        s.check()
                    except ingest.BudgetExceeded:
                        elapsed = (time.perf_counter() - t0) * 1000
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
                    if elapsed > 40:
                        slow.append((round(t0 - t_start, 2), round(elapsed, 1)))
                time.sleep(0.02)
        finally:
            ingest.close(timeout=2.0)
    if not samples:
        raise StageError(f"no session of {sessions} got BudgetExceeded within 5 s")
    return {**dist(samples), "missed": missed, "samples": [round(x, 2) for x in samples], "slow_over_40ms": slow}


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
