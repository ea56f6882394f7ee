"""The API's view of budget policies: the compacted `budget-policies` topic, read from the
beginning by a background consumer (assigned partitions, no consumer group), kept in memory.

The topic is the source of truth; the API writes it (`processors.policies`) and reads this
cache. After a write, `wait_caught_up()` waits until the cache has read up to the topic's
end, so a client reads its own write and every API process sees it within a poll interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import cast

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import ValidationError

from agentledger.kafka_admin import ensure_topics
from agentledger.settings import Settings
from schemas.budgets import BudgetPolicy, PolicyRecord, split_record
from schemas.topics import BUDGET_POLICIES

log = structlog.get_logger(__name__)


class PolicyCacheUnavailable(Exception):
    """The budget-policies topic could not be read in time: check Kafka (AGENTLEDGER_KAFKA_BOOTSTRAP)."""


class PolicyCache:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic(BUDGET_POLICIES.suffix)
        self._policies: dict[str, BudgetPolicy] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._probe: Consumer | None = None
        """Asks for end offsets: librdkafka blocks a handle's queries while it is polled elsewhere."""
        self._probe_lock = threading.Lock()
        self._positions: dict[int, int] = {}
        self._started = threading.Lock()

    # -- reading -------------------------------------------------------------------------------

    def policies(self) -> list[BudgetPolicy]:
        with self._lock:
            return sorted(self._policies.values(), key=lambda p: p.policy_id)

    def get(self, policy_id: str) -> BudgetPolicy | None:
        with self._lock:
            return self._policies.get(policy_id)

    # -- consuming -----------------------------------------------------------------------------

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        policy_id = key.decode("utf-8", "replace")
        if value is None:
            with self._lock:
                self._policies.pop(policy_id, None)
            return
        try:
            # the opening balance a record may carry is the workers' business, not the API's
            policy, _ = split_record(PolicyRecord.model_validate_json(value))
        except ValidationError as exc:
            log.error("policy_cache.invalid", policy_id=policy_id, error=str(exc)[:500])
            return
        with self._lock:
            self._policies[policy_id] = policy

    def _poll(self, timeout: float) -> None:
        assert self._consumer is not None
        msg = self._consumer.poll(timeout)
        if msg is None:
            return
        err = msg.error()
        if err is not None:
            if cast(KafkaError, err).code() != KafkaError._PARTITION_EOF:
                log.warning("policy_cache.kafka_error", error=str(err))
            return
        self._apply(msg.key(), msg.value())
        partition, offset = msg.partition(), msg.offset()
        if partition is not None and offset is not None:
            self._positions[partition] = offset + 1

    def start(self, timeout: float = 15.0) -> None:
        """Read the topic to its end, then follow it in a daemon thread (idempotent)."""
        with self._started:
            if self._thread is not None:
                return
            try:
                ensure_topics(self.settings, (BUDGET_POLICIES,))
                config = {
                    "bootstrap.servers": self.settings.kafka_bootstrap,
                    "group.id": f"{self.settings.sink_group}-api-policies",  # never joined
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 50,
                }
                self._consumer = Consumer(config)
                self._probe = Consumer(config)
                meta = self._consumer.list_topics(self.topic, timeout=timeout)
                parts = sorted(meta.topics[self.topic].partitions)
                self._consumer.assign([TopicPartition(self.topic, p, -2) for p in parts])
                self._positions = {p: 0 for p in parts}
            except KafkaException as exc:
                raise PolicyCacheUnavailable(f"cannot read {self.topic}: {exc}") from exc
            self._catch_up(timeout)
            self._thread = threading.Thread(target=self._run, name="agentledger-policy-cache", daemon=True)
            self._thread.start()

    def _ends(self, timeout: float) -> dict[int, int]:
        assert self._probe is not None
        with self._probe_lock:
            return {
                p: self._probe.get_watermark_offsets(TopicPartition(self.topic, p), timeout=timeout, cached=False)[1]
                for p in self._positions
            }

    def _caught_up(self, ends: dict[int, int]) -> bool:
        return all(self._positions.get(p, 0) >= end for p, end in ends.items())

    def _catch_up(self, timeout: float) -> None:
        self._read_to_end(timeout, self._poll, 0.1)

    def wait_caught_up(self, timeout: float = 10.0) -> None:
        """Until the cache has applied everything written to the topic before this call."""
        self.start(timeout)
        self._read_to_end(timeout, time.sleep, 0.02)

    def _read_to_end(self, timeout: float, step: Callable[[float], object], interval: float) -> None:
        """Until the topic's current end is applied: `step` reads (this thread) or waits (another's)."""
        try:
            ends = self._ends(timeout)
        except KafkaException as exc:
            raise PolicyCacheUnavailable(f"cannot read {self.topic}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while not self._caught_up(ends):
            if time.monotonic() > deadline:
                raise PolicyCacheUnavailable(f"{self.topic} not read to its end within {timeout:.0f}s")
            step(interval)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll(0.2)
            except Exception:  # the cache must outlive a broker hiccup
                log.exception("policy_cache.poll_failed")
                self._stop.wait(1)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for consumer in (self._consumer, self._probe):
            if consumer is not None:
                consumer.close()
