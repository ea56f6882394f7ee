"""Create the pipeline's topics from the one table in `schemas.topics`."""

from __future__ import annotations

import contextlib
import time

import structlog
from confluent_kafka import ConsumerGroupState, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from agentledger.settings import Settings
from schemas.topics import ALL_TOPICS, TopicSpec, topic_name

log = structlog.get_logger(__name__)


def wait_for_broker(settings: Settings, give_up_after: float | None = None) -> None:
    """Return once the brokers answer; until then retry with backoff (0.5 s doubling to 10 s),
    logging each miss. A process started before Kafka (a reboot, a compose stack coming up)
    waits instead of exiting. `give_up_after` seconds: raise KafkaException instead."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    started = time.monotonic()
    pause = 0.5
    while True:
        try:
            admin.list_topics(timeout=5.0)
            return
        except KafkaException as exc:
            waited = time.monotonic() - started
            if give_up_after is not None and waited + pause > give_up_after:
                raise
            log.warning(
                "kafka.unreachable", bootstrap=settings.kafka_bootstrap, waited_s=round(waited, 1), error=str(exc)
            )
        time.sleep(pause)
        pause = min(pause * 2, 10.0)


def ensure_topics(settings: Settings, specs: tuple[TopicSpec, ...] = ALL_TOPICS, timeout: float = 30.0) -> None:
    """Create any missing topic; existing topics are left as they are."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            topic_name(settings.topic_prefix, spec),
            num_partitions=spec.partitions or settings.partitions,
            replication_factor=settings.replication_factor,
            config=spec.config(),
        )
        for spec in specs
        if topic_name(settings.topic_prefix, spec) not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            log.info("topic.created", topic=name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_for_leaders(admin, {t.topic for t in wanted}, timeout)


def _wait_for_leaders(admin: AdminClient, names: set[str], timeout: float) -> None:
    """Until every partition of `names` answers a ListOffsets request. A new topic's metadata
    names a leader before that broker serves the partition, and a client that comes in between
    gets NOT_LEADER_FOR_PARTITION; asking the leader itself is the only test that holds."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = _partitions_not_serving(admin, names, timeout)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"not served after {timeout}s: {waiting}"))
        time.sleep(0.05)


def _partitions_not_serving(admin: AdminClient, names: set[str], timeout: float) -> list[str]:
    topics = admin.list_topics(timeout=timeout).topics
    waiting: list[str] = []
    requests: dict[TopicPartition, OffsetSpec] = {}
    for name in sorted(names):
        meta = topics.get(name)
        if meta is None or meta.error is not None or not meta.partitions:
            waiting.append(name)
            continue
        for p, part in meta.partitions.items():
            if part.leader < 0 or part.error is not None:
                waiting.append(f"{name}[{p}]")
            else:
                requests[TopicPartition(name, p)] = OffsetSpec.latest()
    if waiting or not requests:
        return waiting
    for tp, future in admin.list_offsets(requests, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException:
            waiting.append(f"{tp.topic}[{tp.partition}]")
    return waiting


def wait_for_group(settings: Settings, group_id: str, timeout: float = 120.0) -> bool:
    """Wait until a consumer group is stable with at least one member holding partitions."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            description = admin.describe_consumer_groups([group_id], request_timeout=5)[group_id].result(timeout=10)
            if description.state == ConsumerGroupState.STABLE and any(
                m.assignment.topic_partitions for m in description.members
            ):
                return True
        except KafkaException:
            pass
        time.sleep(0.3)
    return False


def delete_run_topics(settings: Settings) -> None:
    """Drop the topics under `settings.topic_prefix` and its worker's faust topics (tests and
    benches, which give each run its own prefix, so a long session does not fill the broker's
    small heap with partitions). Raises KafkaException if the broker cannot list topics."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    names = [
        t
        for t in admin.list_topics(timeout=10).topics
        if t.startswith(settings.topic_prefix) or t.startswith(f"{settings.worker_id}-")
    ]
    if names:
        for future in admin.delete_topics(names, operation_timeout=10).values():
            with contextlib.suppress(Exception):  # already gone, or deleted by another cleanup
                future.result(timeout=15)
