"""Fixtures for the processors: raw event builders, a worker subprocess, topic readers."""

from __future__ import annotations

import itertools
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from agentledger.local import terminate
from agentledger.settings import Settings
from schemas.events import CostEvent, derive_event_id
from tests.conftest import delete_test_topics

ROOT = Path(__file__).resolve().parents[2]


def make_event(**overrides: Any) -> dict[str, Any]:
    """A valid llm_call event as the hook would send it (JSON-ready dict)."""
    step = overrides.pop("step", 0)
    workflow = overrides.pop("workflow_id", "wf-" + uuid.uuid4().hex[:8])
    step_name = overrides.pop("step_name", "call")
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": derive_event_id(workflow, step, step_name),
        "kind": "llm_call",
        "occurred_at": "2026-06-01T12:00:00Z",
        "session_id": "sess-1",
        "workflow_id": workflow,
        "step": step,
        "step_name": step_name,
        "agent_type": "pr-reviewer",
        "team": "platform",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 200,
    }
    event.update(overrides)
    return event


def cost_event(**overrides: Any) -> CostEvent:
    """A valid llm_call CostEvent (1000 in, 500 out, at 2026-06-01 12:00 UTC) for pricing tests;
    `provider` and `model` are the caller's."""
    values: dict[str, Any] = {
        "event_id": "0" * 32,
        "kind": "llm_call",
        "occurred_at": datetime(2026, 6, 1, 12, tzinfo=UTC),
        "session_id": "s1",
        "workflow_id": "wf",
        "step": 0,
        "step_name": "call",
        "agent_type": "a",
        "input_tokens": 1000,
        "output_tokens": 500,
    }
    values.update(overrides)
    return CostEvent(**values)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path) -> None:
        env = settings.environment(worker_web_port=_free_port())
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "processors.worker"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self, timeout: float = 30.0) -> int:
        code = terminate(self.proc, timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def report(self, timeout: float = 3.0) -> str:
        """A live worker's view of its partitions and commits (SIGUSR1), for a failure's message."""
        if self.proc.poll() is not None:
            return f"(exited with {self.proc.returncode})"
        before = self.log().count("partitions: ")
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while self.log().count("partitions: ") == before and time.monotonic() < deadline:
            time.sleep(0.1)
        head, *rest = self.log().rpartition("partitions: ")[2].splitlines() or [""]
        return "\n".join([head, *itertools.takewhile(lambda line: line.startswith("  "), rest)])


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """Start `python -m processors.worker` for some settings; at the end every worker is stopped
    and the test's topics are deleted."""
    started: list[WorkerProcess] = []
    used: dict[str, Settings] = {}

    def start(settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        used[settings.topic_prefix] = settings
        return worker

    yield start
    for worker in started:
        worker.stop()
    for settings in used.values():
        delete_test_topics(settings)


def produce(settings: Settings, suffix: str, records: list[tuple[str | None, bytes | dict[str, Any]]]) -> None:
    """Produce like the hook does: keyed by session id, murmur2 partitioning."""
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "partitioner": "murmur2_random", "linger.ms": 0}
    )
    for key, value in records:
        payload = value if isinstance(value, bytes) else orjson.dumps(value)
        producer.produce(settings.topic(suffix), key=key.encode() if key else None, value=payload)
    assert producer.flush(10) == 0


class TopicReader:
    """Reads one topic from the beginning (read_committed), accumulating what it has seen."""

    def __init__(self, settings: Settings, suffix: str) -> None:
        self.settings = settings
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 50,
            }
        )
        self.consumer.subscribe([settings.topic(suffix)])
        self.records: list[tuple[bytes | None, dict[str, Any], int]] = []

    def poll_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.1)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                continue
            self.records.append((msg.key(), orjson.loads(msg.value()), msg.partition()))

    def wait_for(self, count: int, timeout: float = 40.0, settle: float = 4.0) -> list[dict[str, Any]]:
        """Wait until `count` records have arrived, then `settle` seconds more to catch extras."""
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            self.poll_for(0.2)
        self.poll_for(settle)
        return [value for _, value, _ in self.records]

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def reader_factory() -> Iterator[Callable[[Settings, str], TopicReader]]:
    readers: list[TopicReader] = []

    def make(settings: Settings, suffix: str) -> TopicReader:
        reader = TopicReader(settings, suffix)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()
