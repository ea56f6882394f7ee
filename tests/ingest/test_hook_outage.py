"""Kafka goes away mid-run and comes back: nothing lost, nothing doubled.

Runs against a private broker (port 19192) that the test stops and starts with the
project's script; the shared broker is never touched.
"""

from __future__ import annotations

import threading
import time

import orjson
import pytest

import ingest
from tests.ingest.conftest import read_topic

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
