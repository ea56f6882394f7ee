"""Shared fixtures: the real local Kafka broker (started by scripts/kafka.sh) and per-test
settings with their own topic prefix and ClickHouse data folder."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from agentledger.kafka_admin import delete_run_topics, ensure_topics
from agentledger.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = ROOT / "scripts" / "kafka.sh"
KAFKA_PORT = int(os.environ.get("AGENTLEDGER_KAFKA_PORT", "19092"))
BOOTSTRAP = f"127.0.0.1:{KAFKA_PORT}"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """The local broker's bootstrap address; started through the project's script if down.

    A broker that this fixture started is stopped at the end of the session; one that was
    already running is left running.
    """
    started_here = not _port_open(KAFKA_PORT)
    subprocess.run(["bash", str(KAFKA_SCRIPT), "start"], check=True, timeout=300)
    yield BOOTSTRAP
    if started_here and os.environ.get("AGENTLEDGER_KEEP_KAFKA") != "1":
        subprocess.run(["bash", str(KAFKA_SCRIPT), "stop"], check=False, timeout=120)


@pytest.fixture
def kafka_script() -> Callable[[str], None]:
    """Run `scripts/kafka.sh <command>` (start, stop, restart) on the test broker."""

    def run(command: str) -> None:
        subprocess.run(["bash", str(KAFKA_SCRIPT), command], check=True, timeout=300)

    return run


def read_topic(settings: Settings, suffix: str, timeout: float = 20.0) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of a topic, up to its end when called, partition by partition."""
    topic = settings.topic(suffix)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "test-read"})
    try:
        parts = sorted(consumer.list_topics(topic, timeout=timeout).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + timeout
        while len(out) < sum(ends.values()) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append((msg.key(), msg.value()))
        return out
    finally:
        consumer.close()


def delete_test_topics(settings: Settings) -> None:
    """Best effort: drop a test's topics and its worker's faust topics."""
    with contextlib.suppress(Exception):  # cleanup must never fail a test
        delete_run_topics(settings)


@pytest.fixture
def settings_factory(kafka_broker: str, tmp_path: Path) -> Iterator[Callable[..., Settings]]:
    """Settings isolated for one test: a fresh topic prefix, database and chDB folder.

    The pipeline's topics are created before the settings are returned, and deleted (with
    the worker's faust topics) after the test.
    """
    made: dict[str, Settings] = {}

    def make(**overrides: Any) -> Settings:
        tag = uuid.uuid4().hex[:10]
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_broker,
            "topic_prefix": f"t{tag}.",
            "worker_id": f"worker-{tag}",
            "sink_group": f"sink-{tag}",
            "database": f"db_{tag}",
            "chdb_path": tmp_path / f"chdb-{tag}",
            "partitions": 3,
        }
        values.update(overrides)
        settings = Settings(**values)
        ensure_topics(settings)
        made[tag] = settings
        return settings

    yield make
    for settings in made.values():
        delete_test_topics(settings)
