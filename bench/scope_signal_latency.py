"""Team-budget signal latency: from producing the event that crosses a team budget to its
signal being consumed, through the scope repartition (cost-events -> worker -> scope-usage ->
the owner's scope preview, which reads it before the transaction commits -> signals).

Session budgets are decided where the event is priced (bench.signal_latency); a budget wider
than a session needs one more hop through Kafka. Before processors.scope_preview this waited
for faust's commit of the scope-usage record (p50 0.6 s). Each trial uses a fresh team: one
event of 6,000 tokens from one session, a pause, then (timed) 6,000 tokens from another
session of the team against a 10,000-token team budget.

    .venv/bin/python -m bench.scope_signal_latency [--trials 10]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer

from agentledger.kafka_admin import ensure_topics
from agentledger.settings import Settings
from bench.common import delete_topics
from processors.policies import publish_policy
from schemas.budgets import BudgetPolicy, Scope
from schemas.events import derive_event_id
from schemas.topics import COST_EVENTS, SIGNALS

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def event(session: str, team: str, step: int, tokens: int) -> bytes:
    wf = f"wf-{session}"
    return orjson.dumps(
        {
            "event_id": derive_event_id(wf, step, "call"),
            "kind": "llm_call",
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "session_id": session,
            "workflow_id": wf,
            "step": step,
            "step_name": "call",
            "agent_type": "bench",
            "team": team,
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": tokens,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--bootstrap", default=os.environ.get("AGENTLEDGER_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=args.bootstrap, topic_prefix=f"bench{tag}.", worker_id=f"bench-{tag}", partitions=3
    )
    ensure_topics(settings)
    publish_policy(settings, BudgetPolicy(policy_id="team", scope=(Scope.TEAM,), limit_tokens=10_000))
    env = settings.environment(worker_web_port=free_port())
    log = tempfile.NamedTemporaryFile(prefix="scope-bench-", suffix=".log", delete=False)  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "processors.worker"], cwd=ROOT, env=env, stdout=log, stderr=log)
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 0, "partitioner": "murmur2_random"}
    )
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"reader-{tag}",
            "auto.offset.reset": "latest",
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.subscribe([settings.topic(SIGNALS.suffix)])
    cost_topic = settings.topic(COST_EVENTS.suffix)
    samples: list[float] = []
    missed = 0
    try:
        consumer.poll(5.0)  # join, and let the worker start
        time.sleep(10)
        for trial in range(args.trials):
            team = f"team-{trial}"
            producer.produce(cost_topic, key=f"a-{trial}".encode(), value=event(f"a-{trial}", team, 0, 6000))
            producer.flush(5)
            time.sleep(5)  # committed and counted by the scope agent
            started = time.perf_counter()
            producer.produce(cost_topic, key=f"b-{trial}".encode(), value=event(f"b-{trial}", team, 0, 6000))
            producer.flush(5)
            got = None
            while time.perf_counter() - started < 20 and got is None:
                msg = consumer.poll(0.05)
                if msg is not None and not msg.error() and orjson.loads(msg.value())["scope_value"] == f"team={team}":
                    got = time.perf_counter() - started
            if got is None:
                missed += 1
            else:
                samples.append(got * 1000)
    finally:
        worker.terminate()
        worker.wait(30)
        consumer.close()
        delete_topics(settings)
    samples.sort()
    print(
        json.dumps(
            {
                "trials": args.trials,
                "missed": missed,
                "team_signal_ms": {
                    "p50": round(samples[len(samples) // 2], 1) if samples else None,
                    "max": round(samples[-1], 1) if samples else None,
                    "samples": [round(s, 1) for s in samples],
                },
                "loadavg": os.getloadavg(),
                "worker_log": log.name,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
