"""Fixtures for the SDK hook: a configured hook factory, topic readers, a private broker."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

import ingest
from agentledger.kafka_admin import ensure_topics
from agentledger.settings import Settings
from ingest import runtime
from schemas.codec import encode

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = ROOT / "scripts" / "kafka.sh"


def spooled_events(timeout: float = 5.0) -> list[dict[str, Any]]:
    """The events an offline hook has written to its spool, in order, once none is still on its
    way there (queued, or taken off the queue by the delivery thread and not yet written)."""
    rt = runtime.current()
    assert rt is not None
    deadline = time.monotonic() + timeout
    while rt.delivery.unspooled() and time.monotonic() < deadline:
        time.sleep(0.005)
    return [orjson.loads(r.value) for r in rt.delivery.spool.read_after(0, 1_000_000)]


def free_port_pair() -> int:
    """A port p with p and p + 1 free on loopback: a private broker's listener and controller."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports on 127.0.0.1")


def dead_bootstrap() -> str:
    """An address where nothing listens: the hook must spool."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[Callable[..., ingest.IngestConfig]]:
    """Factory: `hook(settings=..., **configure_kwargs)` configures the process-wide hook.

    Without settings it points at a dead address with signals off (for unit tests). The
    hook is closed after the test.
    """

    def make(settings: Settings | None = None, **kwargs: Any) -> ingest.IngestConfig:
        values: dict[str, Any] = {"spool_dir": tmp_path / "spool", "exit_timeout_s": 1.0}
        if settings is None:
            values.update(bootstrap_servers=dead_bootstrap(), topic_prefix="unit.", listen_signals=False)
        else:
            values.update(bootstrap_servers=settings.kafka_bootstrap, topic_prefix=settings.topic_prefix)
        values.update(kwargs)
        return ingest.configure(**values)

    yield make
    ingest.close(timeout=0.5)


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every message of `topic` from the beginning up to its current end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        parts = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        ends = {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out: list[Any] = []
        done: set[int] = set()
        import time

        deadline = time.monotonic() + timeout
        while len(done) < len(ends) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None:
                    if msg.error().code() == -191:
                        done.add(msg.partition())
                    continue
                out.append(msg)
                if msg.offset() >= ends[msg.partition()] - 1:
                    done.add(msg.partition())
        return out
    finally:
        consumer.close()


def publish(bootstrap: str, topic: str, key: str, model: Any, producer: Producer | None = None) -> None:
    """Produce one model and wait for its acknowledgement."""
    producer = producer or Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    producer.produce(topic, encode(model), key.encode())
    assert producer.flush(10) == 0


@dataclass
class PrivateBroker:
    """A broker of this test module's own, which tests may stop and start."""

    port: int
    home: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, command: str) -> None:
        env = {**os.environ, "AGENTLEDGER_KAFKA_PORT": str(self.port), "AGENTLEDGER_KAFKA_HOME": str(self.home)}
        subprocess.run(["bash", str(KAFKA_SCRIPT), command], check=True, timeout=300, env=env, cwd=ROOT)

    def settings(self) -> Settings:
        settings = Settings(kafka_bootstrap=self.bootstrap, topic_prefix=f"p{uuid.uuid4().hex[:10]}.", partitions=3)
        ensure_topics(settings)
        return settings


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A separate single-node broker on free ports (AGENTLEDGER_PRIVATE_KAFKA_PORT to pin one)
    in a temporary folder. Never the shared broker: tests stop this one on purpose.
    """
    port = int(os.environ.get("AGENTLEDGER_PRIVATE_KAFKA_PORT") or free_port_pair())
    broker = PrivateBroker(port, tmp_path_factory.mktemp("kafka-private"))
    broker.run("start")
    try:
        yield broker
    finally:
        broker.run("stop")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's and aiokafka's default partitioner)."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(data[i * 4 : i * 4 + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest, tail = length % 4, length & ~3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def kafka_partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions
