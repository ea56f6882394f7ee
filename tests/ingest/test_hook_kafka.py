"""The hook against the real shared broker: delivery, partitioning, signals, spool replay, fork."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

import ingest
from ingest import runtime
from schemas.budgets import Action, Scope, SessionState, SessionStatus, Signal
from schemas.events import derive_event_id
from tests.ingest.conftest import dead_bootstrap, kafka_partition, publish, read_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def kill_signal(session_id: str, action: Action = Action.KILL, n: int = 0) -> Signal:
    return Signal(
        signal_id=f"{session_id}:{action.value}:{n}",
        session_id=session_id,
        action=action,
        policy_id="cap-1",
        scope=(Scope.SESSION,),
        scope_value=session_id,
        limit_tokens=5000,
        spent_tokens=5100,
        spent_cost=Decimal("0.0125"),
        reason=f"session over 5000 tokens ({action.value})",
        recommended_model="gpt-4o-mini" if action is Action.DOWNGRADE else None,
        issued_at=datetime.now(UTC),
    )


def test_recorded_calls_arrive_once_with_exact_tokens_in_the_murmur2_partition(settings_factory, hook) -> None:
    settings = settings_factory()
    hook(settings)
    sessions = [f"sess-{i}" for i in range(7)]
    expected: dict[str, tuple[str, int, int, int, int]] = {}
    for n, session_id in enumerate(sessions):
        with ingest.session(session_id=session_id, agent_type="tester", team=f"team-{n % 2}") as s:
            for i in range(60):
                tokens = (1000 * n + i, 10 * i + 1, i % 7, i % 3)
                event_id = s.record_llm_call(
                    "openai",
                    "gpt-4o",
                    input_tokens=tokens[0],
                    output_tokens=tokens[1],
                    cache_read_tokens=tokens[2],
                    cache_write_tokens=tokens[3],
                )
                expected[event_id] = (session_id, *tokens)
            expected[s.record_tool_call("search", 12, fee=Decimal("0.001"))] = (session_id, 0, 0, 0, 0)
    assert ingest.flush(30) is True
    messages = read_topic(settings.kafka_bootstrap, settings.topic("cost-events"))
    assert len(messages) == len(expected) == 7 * 61
    seen = {}
    for msg in messages:
        event = orjson.loads(msg.value())
        assert msg.key() == event["session_id"].encode()
        assert msg.partition() == kafka_partition(msg.key(), 3)
        seen[event["event_id"]] = (
            event["session_id"],
            event.get("input_tokens", 0),
            event.get("output_tokens", 0),
            event.get("cache_read_tokens", 0),
            event.get("cache_write_tokens", 0),
        )
    assert seen == expected
    assert len({m.partition() for m in messages}) > 1
    stats = ingest.stats()
    assert (stats.recorded, stats.delivered, stats.pending, stats.dropped, stats.invalid) == (427, 427, 0, 0, 0)


def test_kill_signal_stops_the_session_within_200ms_and_spares_the_others(settings_factory, hook) -> None:
    settings = settings_factory()
    hook(settings)
    rt = runtime.current()
    assert rt is not None and rt.guards.ready.wait(10)
    victim = ingest.session(session_id="victim", agent_type="a", workflow_id="wf-victim")
    bystander = ingest.session(session_id="bystander", agent_type="a")
    victim.record_llm_call("openai", "gpt-4o", 100, 10)
    assert victim.check() is SessionState.ACTIVE
    # a connected producer, warmed on the signals topic: measure the signal path, not a connect
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 0})
    publish(settings.kafka_bootstrap, settings.topic("signals"), "other", kill_signal("other"), producer)
    deadline = time.monotonic() + 5
    while rt.guards.get("other") is None and time.monotonic() < deadline:
        time.sleep(0.001)

    published = time.perf_counter()
    publish(settings.kafka_bootstrap, settings.topic("signals"), "victim", kill_signal("victim"), producer)
    while True:
        try:
            victim.check()
        except ingest.BudgetExceeded as stop:
            latency = time.perf_counter() - published
            error = stop
            break
        if time.perf_counter() - published > 5:
            pytest.fail("no BudgetExceeded 5 s after the kill signal")
        time.sleep(0.001)
    print(f"kill signal to BudgetExceeded: {latency * 1000:.1f} ms (publish included)")
    assert latency < 0.2
    assert (error.policy_id, error.limit, error.spend, error.reason) == (
        "cap-1",
        5000,
        5100,
        "session over 5000 tokens (kill)",
    )
    assert bystander.check() is SessionState.ACTIVE
    bystander.record_llm_call("openai", "gpt-4o", 1, 1)
    # a recorded call is a fact: published even though the session is dead, then refused
    with pytest.raises(ingest.BudgetExceeded):
        victim.record_llm_call("openai", "gpt-4o", 333, 44)
    with pytest.raises(ingest.BudgetExceeded), victim.llm_call("openai", "gpt-4o", 100):
        pytest.fail("a killed session must not start a call")
    assert ingest.flush(10)
    events = [orjson.loads(m.value()) for m in read_topic(settings.kafka_bootstrap, settings.topic("cost-events"))]
    victim_events = sorted((e["step"], e["input_tokens"], e["kind"]) for e in events if e["session_id"] == "victim")
    assert victim_events == [(0, 100, "llm_call"), (1, 333, "llm_call")]
    assert sum(e["session_id"] == "bystander" for e in events) == 1


def test_pause_warn_and_downgrade_signals_reach_the_session(settings_factory, hook) -> None:
    settings = settings_factory()
    warned: list[Signal] = []
    hook(settings, on_warn=warned.append)
    rt = runtime.current()
    assert rt is not None and rt.guards.ready.wait(10)
    s = ingest.session(session_id="graded", agent_type="a")
    signals = settings.topic("signals")
    publish(settings.kafka_bootstrap, signals, "graded", kill_signal("graded", Action.WARN))
    publish(settings.kafka_bootstrap, signals, "graded", kill_signal("graded", Action.DOWNGRADE))
    deadline = time.monotonic() + 5
    while s.recommended_model("gpt-4o") == "gpt-4o" and time.monotonic() < deadline:
        time.sleep(0.005)
    assert s.recommended_model("gpt-4o") == "gpt-4o-mini"
    assert s.check() is SessionState.DOWNGRADED
    assert [w.action for w in warned] == [Action.WARN]
    publish(settings.kafka_bootstrap, signals, "graded", kill_signal("graded", Action.PAUSE))
    deadline = time.monotonic() + 5
    with pytest.raises(ingest.BudgetPaused):
        while time.monotonic() < deadline:
            s.check()
            time.sleep(0.005)


def test_session_killed_before_the_process_started_cannot_start_calls(settings_factory, hook) -> None:
    settings = settings_factory()
    status = SessionStatus(
        session_id="dead-on-arrival",
        state=SessionState.KILLED,
        signal=kill_signal("dead-on-arrival"),
        updated_at=datetime.now(UTC),
    )
    publish(settings.kafka_bootstrap, settings.topic("session-status"), "dead-on-arrival", status)
    alive = SessionStatus(session_id="alive", state=SessionState.ACTIVE, updated_at=datetime.now(UTC))
    publish(settings.kafka_bootstrap, settings.topic("session-status"), "alive", alive)
    hook(settings, status_wait_s=10.0)
    with ingest.session(session_id="dead-on-arrival", agent_type="a") as s:
        with pytest.raises(ingest.BudgetExceeded) as stop, s.llm_call("openai", "gpt-4o", 100, 10):
            pytest.fail("must not start")
        assert stop.value.policy_id == "cap-1"
    with ingest.session(session_id="alive", agent_type="a") as ok:
        assert ok.check() is SessionState.ACTIVE
    assert ingest.stats().recorded == 0


def _spool_child(spool_dir: Path, bootstrap: str, prefix: str, count: int) -> subprocess.CompletedProcess[str]:
    code = f"""
import os, signal, sys, time
import ingest
ingest.configure(bootstrap_servers={bootstrap!r}, topic_prefix={prefix!r}, spool_dir={str(spool_dir)!r},
                 listen_signals=False)
with ingest.session(session_id="spooler", agent_type="a", workflow_id="wf-spool") as s:
    for i in range({count}):
        s.record_llm_call("openai", "gpt-4o", input_tokens=i, output_tokens=1)
deadline = time.monotonic() + 20
spool = ingest.runtime.current().delivery.spool
while spool.count < {count} and time.monotonic() < deadline:
    time.sleep(0.01)
print(spool.count, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_spool_survives_sigkill_and_the_next_process_replays_it(settings_factory, tmp_path: Path) -> None:
    settings = settings_factory()
    spool_dir = tmp_path / "spool"
    done = _spool_child(spool_dir, dead_bootstrap(), settings.topic_prefix, 500)
    assert done.returncode == -9, done.stderr[-2000:]
    assert done.stdout.strip() == "500"
    replay = f"""
import ingest
ingest.configure(bootstrap_servers={settings.kafka_bootstrap!r}, topic_prefix={settings.topic_prefix!r},
                 spool_dir={str(spool_dir)!r}, listen_signals=False)
ok = ingest.flush(30)
s = ingest.stats()
print(ok, s.recorded, s.delivered, s.replayed, s.pending)
"""
    out = subprocess.run([sys.executable, "-c", replay], capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "0", "500", "500", "0"]
    events = [orjson.loads(m.value()) for m in read_topic(settings.kafka_bootstrap, settings.topic("cost-events"))]
    assert len(events) == 500
    assert [e["input_tokens"] for e in events] == list(range(500))  # one key, one partition: in order
    assert {e["event_id"] for e in events} == {derive_event_id("wf-spool", i, "llm") for i in range(500)}


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_gets_its_own_delivery(settings_factory, hook) -> None:
    settings = settings_factory()
    hook(settings, listen_signals=False)
    s = ingest.session(session_id="forker", agent_type="a")
    for i in range(50):
        s.record_llm_call("openai", "gpt-4o", i, 1, step=i)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            child = ingest.session(session_id="forker", agent_type="a", workflow_id="child")
            for i in range(30):
                child.record_llm_call("openai", "gpt-4o", 1000 + i, 1)
            ok = ingest.flush(20)
            code = 0 if ok and ingest.stats().delivered == 30 and ingest.stats().recorded == 30 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ingest.flush(20)
    events = [orjson.loads(m.value()) for m in read_topic(settings.kafka_bootstrap, settings.topic("cost-events"))]
    counts = Counter(e["workflow_id"] for e in events)
    assert counts == {"forker": 50, "child": 30}
    assert len({e["event_id"] for e in events}) == 80


def test_events_recorded_without_flush_are_delivered_at_exit(settings_factory, tmp_path: Path) -> None:
    settings = settings_factory()
    code = f"""
import ingest
ingest.configure(bootstrap_servers={settings.kafka_bootstrap!r}, topic_prefix={settings.topic_prefix!r},
                 spool_dir={str(tmp_path / "spool")!r}, listen_signals=False)
s = ingest.session(session_id="at-exit", agent_type="a")
for i in range(300):
    s.record_llm_call("openai", "gpt-4o", i, 1)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    events = read_topic(settings.kafka_bootstrap, settings.topic("cost-events"))
    assert sorted(orjson.loads(m.value())["input_tokens"] for m in events) == list(range(300))


def test_no_prompt_text_reaches_kafka(settings_factory, hook) -> None:
    canary = "CANARY-7f3a-do-not-leak"
    settings = settings_factory()
    hook(settings, listen_signals=False)
    with ingest.session(session_id="canary", agent_type="a") as s:
        prompt = f"Summarise this: {canary}"
        with pytest.raises(RuntimeError), s.llm_call("openai", "gpt-4o", 100, len(prompt)):
            raise RuntimeError(f"provider rejected prompt {prompt!r}")
        with s.llm_call("openai", "gpt-4o", 100, len(prompt)) as call:
            call.settle(input_tokens=12, output_tokens=30)

        @ingest.tool("search")
        def search(query: str) -> str:
            raise ValueError(query)

        with pytest.raises(ValueError):
            search(canary)
    assert ingest.flush(10)
    messages = read_topic(settings.kafka_bootstrap, settings.topic("cost-events"))
    assert len(messages) == 5
    assert all(canary.encode() not in m.value() and canary.encode() not in m.key() for m in messages)
