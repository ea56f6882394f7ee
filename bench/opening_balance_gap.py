"""How much spend an opening balance misses: events a worker processed shortly before the
balance was read (not in the warehouse yet) or before it loaded the policy (not counted by it).

A steady stream of events of one team (1,200 tokens each) runs through the real pipeline
(worker subprocess, sink and API in this process on chDB); mid-stream, team policies with a
lifetime window are created through `PUT /v1/budgets` at spread-out times. At the end, each
policy's team budget state (read from the worker's scope-budgets changelog) is compared with
the team's spend in the warehouse: the difference is what the balance plus the worker missed
(never negative: negative would be spend counted twice).

    .venv/bin/python -m bench.opening_balance_gap [--rate 100] [--seconds 30] [--policies 4]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from fastapi.testclient import TestClient

from api.app import create_app
from bench.common import bench_settings, ensure_broker, loadavg, start_worker
from processors.budget import state_key
from schemas.budgets import Window
from schemas.events import derive_event_id
from schemas.topics import COST_EVENTS

TOKENS = 1200
TEAM = "gap"


def _event(i: int) -> bytes:
    session = f"gap-{i % 20}"
    return orjson.dumps(
        {
            "schema_version": 1,
            "event_id": derive_event_id(f"wf-{session}", i, "call"),
            "kind": "llm_call",
            "occurred_at": datetime.now(UTC).isoformat(),
            "session_id": session,
            "workflow_id": f"wf-{session}",
            "step": i,
            "step_name": "call",
            "agent_type": "bench",
            "team": TEAM,
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 1000,
            "output_tokens": 200,
        }
    )


def _stream(settings: Any, rate: float, seconds: float, sent: list[int]) -> None:
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 0, "partitioner": "murmur2_random"}
    )
    topic = settings.topic(COST_EVENTS.suffix)
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < seconds:
        due = started + i / rate
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        producer.produce(topic, key=f"gap-{i % 20}".encode(), value=_event(i))
        producer.poll(0)
        i += 1
    assert producer.flush(30) == 0
    sent.append(i)


def _changelog_states(settings: Any) -> dict[str, dict[str, Any]]:
    """The latest committed scope budget state per key."""
    topic = f"{settings.worker_id}-scope-budgets-changelog"
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"gap-{uuid.uuid4().hex[:6]}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    states: dict[str, dict[str, Any]] = {}
    done: set[int] = set()
    deadline = time.monotonic() + 30
    while len(done) < len(parts) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                done.add(msg.partition())
            continue
        if msg.value() is not None:
            states[msg.key().decode()] = orjson.loads(msg.value())
    consumer.close()
    return states


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--policies", type=int, default=4, help="created at spread-out times mid-stream")
    parser.add_argument("--bootstrap", default=os.environ.get("AGENTLEDGER_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    args = parser.parse_args()
    ensure_broker(args.bootstrap)
    tag = uuid.uuid4().hex[:6]
    with bench_settings(args.bootstrap, tag, "gap", auth="disabled") as settings:
        worker = start_worker(settings)
        try:
            with TestClient(create_app(settings, with_sink=True)) as client:
                time.sleep(10)  # the worker joins its group
                sent: list[int] = []
                stream = threading.Thread(target=_stream, args=(settings, args.rate, args.seconds, sent))
                stream.start()
                writes = []
                for n in range(args.policies):
                    time.sleep(args.seconds / (args.policies + 1))
                    body = {"policy_id": f"gap-{n}", "scope": ["team"], "limit_tokens": 10**8}
                    started = time.monotonic()
                    r = client.put(f"/v1/budgets/gap-{n}", json=body)
                    assert r.status_code == 201, r.text
                    writes.append((f"gap-{n}", r.json()["opening_balance"], time.monotonic() - started))
                stream.join()
                total = sent[0]
                deadline = time.monotonic() + 120
                while client.get("/v1/chargeback").json()["total"]["calls"] < total:
                    assert time.monotonic() < deadline, "the warehouse never caught up"
                    time.sleep(0.5)
                time.sleep(6)  # the scope agent's last batch committed
                states = _changelog_states(settings)
                worker.check_alive()
        finally:
            worker.stop()
            worker.cleanup()
    results = []
    for policy_id, opening, put_s in writes:
        state = states.get(state_key(policy_id, f"team={TEAM}", None, Window.LIFETIME), {})
        counted = int(state.get("tokens", 0))
        missed = total * TOKENS - counted
        results.append(
            {
                "policy": policy_id,
                "balance_events": opening["spent_tokens"] // TOKENS,
                "worker_counted_events": counted // TOKENS - opening["spent_tokens"] // TOKENS,
                "missed_events": missed / TOKENS,
                "missed_s_of_stream": round(missed / TOKENS / args.rate, 2),
                "put_s": round(put_s, 3),
            }
        )
    print(
        json.dumps(
            {"rate": args.rate, "events": total, "trials": results, "loadavg": loadavg()},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
