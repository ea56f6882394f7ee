"""Kafka goes away mid-run and comes back: nothing lost, nothing doubled.

Runs against a private broker (free ports) that the tests stop and start with the
project's script; the shared broker is never touched.
"""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import pytest
from confluent_kafka import Producer

import ingest
from agentledger.settings import Settings
from tests.ingest.conftest import read_topic
from tests.processors.conftest import WorkerProcess, make_event

pytestmark = pytest.mark.integration

TOTAL = 10_000
SESSIONS = 10


def test_broker_stopped_mid_run_then_restarted_delivers_every_event_exactly_once(private_broker, hook) -> None:
    settings = private_broker.settings()
    hook(settings, listen_signals=False, exit_timeout_s=5.0)
    sessions = [
        ingest.session(session_id=f"outage-{i}", agent_type="a", workflow_id=f"wf-{i}") for i in range(SESSIONS)
    ]
    expected: dict[str, int] = {}

    def record(start: int, stop: int, pause: float = 0.0) -> None:
        for n in range(start, stop):
            event_id = sessions[n % SESSIONS].record_llm_call("openai", "gpt-4o", input_tokens=n, output_tokens=1)
            expected[event_id] = n
            if pause and n % 20 == 0:
                time.sleep(pause)

    record(0, 2000)
    assert ingest.flush(30) is True
    record(2000, 3000)  # still queued or in flight when the broker goes
    private_broker.run("stop")
    record(3000, 7000)
    down = ingest.stats()
    assert 2000 <= down.delivered <= 3000 and down.pending == 7000 - down.delivered
    starter = threading.Thread(target=private_broker.run, args=("start",))
    starter.start()
    record(7000, TOTAL, pause=0.002)
    starter.join()
    assert ingest.flush(120) is True

    messages = read_topic(settings.kafka_bootstrap, settings.topic("cost-events"), timeout=60)
    ids = [orjson.loads(m.value())["event_id"] for m in messages]
    assert len(expected) == TOTAL
    assert len(ids) == TOTAL, f"{len(ids) - len(set(ids))} duplicates, {TOTAL - len(set(ids))} missing"
    assert set(ids) == set(expected)
    assert sorted(orjson.loads(m.value())["input_tokens"] for m in messages) == list(range(TOTAL))
    stats = ingest.stats()
    print(f"outage stats: {stats}")
    assert (stats.recorded, stats.delivered, stats.dropped, stats.invalid, stats.pending) == (TOTAL, TOTAL, 0, 0, 0)
    # at least the 4,000 recorded while the broker was down waited in the spool
    assert 4000 <= stats.spooled <= TOTAL - 2000
    assert stats.replayed == stats.spooled


def test_a_worker_started_before_kafka_waits_for_it_then_prices(private_broker, tmp_path) -> None:
    """Started while the broker is down (a reboot, a compose stack coming up), the worker waits
    instead of exiting, and prices events once Kafka is there."""
    settings = Settings(
        kafka_bootstrap=private_broker.bootstrap, topic_prefix=f"w{uuid.uuid4().hex[:10]}.", partitions=3
    )
    private_broker.run("stop")
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        time.sleep(8.0)
        assert worker.proc.poll() is None, worker.log()[-3000:]
        assert "kafka.unreachable" in worker.log()
        private_broker.run("start")
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "partitioner": "murmur2_random"})
        deadline = time.monotonic() + 120
        while settings.topic("cost-events") not in producer.list_topics(timeout=10).topics:
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.5)
        producer.produce(settings.topic("cost-events"), orjson.dumps(make_event(session_id="early")), b"early")
        assert producer.flush(30) == 0
        priced: list[object] = []
        while not priced and time.monotonic() < deadline:
            priced = read_topic(settings.kafka_bootstrap, settings.topic("priced-events"), timeout=10)
            time.sleep(0.5)
        assert len(priced) == 1, worker.log()[-3000:]
    finally:
        worker.stop()
