"""The hook without a broker: step numbering, event ids, validation modes, guards, spool."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

import ingest
from ingest import delivery as delivery_module
from ingest import runtime
from ingest.spool import Spool
from schemas.budgets import Action, Scope, SessionState, SessionStatus, Signal
from schemas.events import derive_event_id
from tests.ingest.conftest import murmur2, spooled_events

pytestmark = pytest.mark.unit


def make_signal(session_id: str, action: Action, **kw: Any) -> Signal:
    values: dict[str, Any] = {
        "signal_id": f"sig-{session_id}-{action.value}-{kw.pop('n', 0)}",
        "session_id": session_id,
        "action": action,
        "policy_id": "p-1",
        "scope": (Scope.SESSION,),
        "scope_value": session_id,
        "limit_tokens": 1000,
        "spent_tokens": 1200,
        "spent_cost": Decimal("0.5"),
        "reason": f"{action.value}: over budget",
        "issued_at": datetime.now(UTC),
    }
    values.update(kw)
    return Signal(**values)


def test_unconfigured_hook_is_a_no_op() -> None:
    ingest.close()
    assert not ingest.is_configured()
    with ingest.session(session_id="s", agent_type="a") as s:
        event_id = s.record_llm_call("openai", "gpt-4o", 1, 1)
        s.record_tool_call("search", 5)
        assert s.check() is SessionState.ACTIVE
        with s.llm_call("openai", "gpt-4o", 100) as call:
            call.settle(input_tokens=1, output_tokens=1)
    assert event_id == derive_event_id("s", 0, "llm")
    assert ingest.flush(0.1) is True
    assert ingest.stats() == ingest.IngestStats()


def test_steps_number_themselves_and_explicit_steps_reuse_their_id(hook) -> None:
    hook()
    with ingest.session(session_id="s-1", agent_type="a", workflow_id="wf-9") as s:
        first = s.record_llm_call("openai", "gpt-4o", 10, 2)
        second = s.record_tool_call("search", 30)
        retried = s.record_llm_call("openai", "gpt-4o", 10, 2, step=0)
        later = s.record_llm_call("openai", "gpt-4o", 10, 2, step=7, step_name="plan")
        after = s.record_llm_call("openai", "gpt-4o", 10, 2)
    assert first == derive_event_id("wf-9", 0, "llm")
    assert second == derive_event_id("wf-9", 1, "search")
    assert retried == first
    assert later == derive_event_id("wf-9", 7, "plan")
    assert after == derive_event_id("wf-9", 8, "llm")
    events = spooled_events()
    assert [(e["event_id"], e["step"], e["step_name"]) for e in events] == [
        (first, 0, "llm"),
        (second, 1, "search"),
        (first, 0, "llm"),
        (later, 7, "plan"),
        (after, 8, "llm"),
    ]
    assert ingest.stats().recorded == 5


def test_recorded_event_carries_attribution_and_exact_usage(hook) -> None:
    hook()
    with ingest.session(
        session_id="s-2", agent_type="pr-reviewer", team="t", project="p", customer="c", tags={"env": "ci"}
    ) as s:
        s.record_llm_call(
            "anthropic",
            "claude-sonnet-4",
            input_tokens=1234,
            output_tokens=567,
            cache_read_tokens=89,
            cache_write_tokens=10,
            reasoning_tokens=100,
            latency_ms=321,
            streamed=True,
            reported_cost=Decimal("0.0123"),
        )
    (event,) = spooled_events()
    assert event["workflow_id"] == "s-2"
    assert (event["agent_type"], event["team"], event["project"], event["customer"]) == ("pr-reviewer", "t", "p", "c")
    assert event["tags"] == {"env": "ci"}
    assert (event["input_tokens"], event["output_tokens"]) == (1234, 567)
    assert (event["cache_read_tokens"], event["cache_write_tokens"], event["reasoning_tokens"]) == (89, 10, 100)
    assert (event["latency_ms"], event["streamed"], event["reported_cost"]) == (321, True, "0.0123")
    assert "prompt" not in event and "completion" not in event


def test_development_mode_raises_invalid_event_at_the_call_site(hook) -> None:
    hook(mode="development")
    with ingest.session(session_id="s-3", agent_type="a") as s:
        with pytest.raises(ingest.InvalidEvent, match="input_tokens"):
            s.record_llm_call("openai", "gpt-4o", -5, 1)
        with pytest.raises(ingest.InvalidEvent):
            s.record_tool_call("bad\nname", 1)
        s.record_llm_call("openai", "gpt-4o", 5, 1)
    assert isinstance(ingest.InvalidEvent("x"), ingest.AgentLedgerError)
    stats = ingest.stats()
    assert (stats.recorded, stats.invalid) == (1, 2)
    assert len(spooled_events()) == 1


def test_development_mode_refuses_an_oversize_event(hook, monkeypatch: pytest.MonkeyPatch) -> None:
    hook(mode="development")
    monkeypatch.setattr(delivery_module, "MAX_EVENT_BYTES", 300)
    s = ingest.session(session_id="s-4", agent_type="a", tags={f"k{i}": "v" * 100 for i in range(3)})
    with pytest.raises(ingest.InvalidEvent, match="over the 300-byte limit"):
        s.record_llm_call("openai", "gpt-4o", 5, 1)
    assert ingest.stats().invalid == 1
    assert spooled_events() == []


def test_production_mode_counts_invalid_events_and_never_raises(hook, caplog: pytest.LogCaptureFixture) -> None:
    hook(mode="production")
    with ingest.session(session_id="s-5", agent_type="a") as s:
        s.record_llm_call("openai", "gpt-4o", -5, 1)
        s.record_llm_call("openai", "gpt-4o", "many", 1)  # type: ignore[arg-type]
        s.record_tool_call("search", -1)
        good = s.record_llm_call("openai", "gpt-4o", 5, 1)
    events = spooled_events()
    assert [e["event_id"] for e in events] == [good]
    stats = ingest.stats()
    assert (stats.recorded, stats.invalid) == (4, 3)
    lines = [r.getMessage() for r in caplog.records if "invalid cost event" in r.getMessage()]
    assert lines == [
        "agentledger: invalid cost event dropped (input_tokens: greater_than_equal)",
        "agentledger: invalid cost event dropped (input_tokens: int_type)",
        "agentledger: invalid cost event dropped (duration_ms: greater_than_equal)",
    ]


def test_reservation_publishes_started_then_settles_it(hook) -> None:
    hook()
    with ingest.session(session_id="s-6", agent_type="a") as s:
        with s.llm_call("openai", "gpt-4o", max_output_tokens=1000, estimated_input_tokens=2000) as call:
            first = call.settle(ingest.Usage(input_tokens=1, output_tokens=420, reasoning_tokens=20), input_tokens=1800)
            assert call.settle(input_tokens=5) == first == call.event_id  # a second settle is ignored
        with pytest.raises(TimeoutError), s.llm_call("openai", "gpt-4o", max_output_tokens=10) as failed:
            raise TimeoutError("provider timed out: secret prompt text")
        with pytest.raises(ConnectionError), s.llm_call("openai", "gpt-4o", 50, streamed=True) as cut:
            cut.observe(input_tokens=30, output_tokens=12)
            raise ConnectionError
    started, settled, started2, aborted, started3, partial = spooled_events()
    assert started["kind"] == "call_started"
    assert started["event_id"] == derive_event_id("s-6", 0, "llm:call_started")
    # genai-prices' gpt-4o price: $2.5 / MTok input, $10 / MTok output
    assert Decimal(started["estimated_cost"]) == Decimal(2000) * Decimal("2.5e-6") + Decimal(1000) * Decimal("10e-6")
    assert (started["max_output_tokens"], started["input_tokens"]) == (1000, 2000)
    assert settled["kind"] == "llm_call" and settled["settles"] == started["event_id"]
    assert settled["event_id"] == derive_event_id("s-6", 0, "llm")
    assert call.started_event_id == started["event_id"]
    assert (settled["input_tokens"], settled["output_tokens"], settled["reasoning_tokens"]) == (1800, 420, 20)
    assert aborted["kind"] == "call_aborted" and aborted["settles"] == started2["event_id"] == failed.started_event_id
    assert aborted["reason"] == "exception: TimeoutError"
    assert "secret" not in orjson.dumps(aborted).decode()
    assert partial["kind"] == "llm_call" and partial["settles"] == started3["event_id"] == cut.started_event_id
    assert (partial["input_tokens"], partial["output_tokens"], partial["error"]) == (30, 12, True)


def test_tool_span_as_context_manager_and_decorator(hook) -> None:
    hook()

    @ingest.tool("fetch", fee=Decimal("0.002"))
    def fetch(url: str) -> str:
        if url == "bad":
            raise ValueError(url)
        return url.upper()

    with ingest.session(session_id="s-7", agent_type="a") as s:
        with s.tool("search") as span:
            span.fee = Decimal("0.01")
        assert fetch("x") == "X"
        with pytest.raises(ValueError):
            fetch("bad")
    assert fetch("outside any session") == "OUTSIDE ANY SESSION"
    events = spooled_events()
    assert [(e["tool_name"], e.get("tool_fee"), e["error"], e["step"]) for e in events] == [
        ("search", "0.01", False, 0),
        ("fetch", "0.002", False, 1),
        ("fetch", "0.002", True, 2),
    ]
    assert all(e["duration_ms"] >= 0 for e in events)


def test_kill_signal_raises_after_recording_the_fact(hook) -> None:
    hook()
    rt = runtime.current()
    assert rt is not None
    with (
        ingest.session(session_id="doomed", agent_type="a") as s,
        ingest.session(session_id="fine", agent_type="a") as t,
    ):
        s.record_llm_call("openai", "gpt-4o", 10, 1)
        rt.guards.apply_signal(make_signal("doomed", Action.KILL, limit_cost=Decimal("2"), spent_cost=Decimal("2.5")))
        with pytest.raises(ingest.BudgetExceeded) as stop:
            s.record_llm_call("openai", "gpt-4o", 10, 1)
        assert t.check() is SessionState.ACTIVE
        t.record_llm_call("openai", "gpt-4o", 10, 1)
        with pytest.raises(ingest.BudgetExceeded):
            s.check()
        with pytest.raises(ingest.BudgetExceeded), s.llm_call("openai", "gpt-4o", 10):
            pytest.fail("a killed session must not start a call")
    error = stop.value
    assert not isinstance(error, ingest.BudgetPaused)
    assert (error.policy_id, error.limit, error.spend, error.reason) == (
        "p-1",
        Decimal("2"),
        Decimal("2.5"),
        "kill: over budget",
    )
    assert ingest.stats().recorded == 3  # the killed session's second call was still recorded


def team_signal(team: str, action: Action, window_end: datetime | None, **kw: Any) -> Signal:
    """A team budget's signal to one of the team's sessions."""
    return make_signal(
        f"{team}-1",
        action,
        policy_id=f"{team}-cap",
        scope=(Scope.TEAM,),
        scope_value=f"team={team}",
        window_end=window_end,
        **kw,
    )


def test_a_session_starting_in_a_breached_team_is_refused_before_its_first_call(hook) -> None:
    hook()
    rt = runtime.current()
    assert rt is not None
    later = datetime.now(UTC) + timedelta(hours=1)
    rt.guards.apply_signal(team_signal("red", Action.KILL, later))
    with ingest.session(session_id="red-2", agent_type="a", team="red") as s:
        with pytest.raises(ingest.BudgetExceeded) as refused, s.llm_call("openai", "gpt-4o", 10):
            pytest.fail("a session of a killed team must not start a call")
        assert (refused.value.session_id, refused.value.policy_id) == ("red-2", "red-cap")
        with pytest.raises(ingest.BudgetExceeded):
            s.check()
    with ingest.session(session_id="blue-1", agent_type="a", team="blue") as other:
        assert other.check() is SessionState.ACTIVE
    # a policy limited by `match` covers only the matching sessions of the team
    rt.guards.apply_signal(team_signal("green", Action.PAUSE, later, match={Scope.AGENT_TYPE: "bot"}))
    with (
        ingest.session(session_id="green-2", agent_type="bot", team="green") as bot,
        pytest.raises(ingest.BudgetPaused),
    ):
        bot.check()
    with ingest.session(session_id="green-3", agent_type="human", team="green") as human:
        assert human.check() is SessionState.ACTIVE
    # a breach whose window has ended, or a warning, refuses nobody
    rt.guards.apply_signal(team_signal("gold", Action.KILL, datetime.now(UTC) - timedelta(seconds=1)))
    rt.guards.apply_signal(team_signal("pink", Action.WARN, None))
    for team in ("gold", "pink"):
        with ingest.session(session_id=f"{team}-2", agent_type="a", team=team) as fine:
            assert fine.check() is SessionState.ACTIVE


def test_pause_warn_downgrade_and_status(hook) -> None:
    warned: list[Signal] = []
    hook(on_warn=warned.append)
    rt = runtime.current()
    assert rt is not None
    with ingest.session(session_id="s-8", agent_type="a") as s:
        rt.guards.apply_signal(make_signal("s-8", Action.WARN))
        rt.guards.apply_signal(make_signal("s-8", Action.WARN))  # same signal id: once
        assert warned == []
        assert s.check() is SessionState.WARNED
        assert [w.action for w in warned] == [Action.WARN]
        assert s.recommended_model("gpt-4o") == "gpt-4o"
        rt.guards.apply_signal(make_signal("s-8", Action.DOWNGRADE, recommended_model="gpt-4o-mini"))
        assert s.recommended_model("gpt-4o") == "gpt-4o-mini"
        assert s.check() is SessionState.DOWNGRADED
        rt.guards.apply_signal(make_signal("s-8", Action.WARN, n=1))  # a milder signal does not lower it
        assert s.check() is SessionState.DOWNGRADED
        rt.guards.apply_signal(make_signal("s-8", Action.PAUSE))
        with pytest.raises(ingest.BudgetPaused):
            s.check()
        # a status older than the signal is stale; a newer one is the truth
        old = datetime.now(UTC) - timedelta(hours=1)
        rt.guards.apply_status(SessionStatus(session_id="s-8", state=SessionState.ACTIVE, updated_at=old))
        with pytest.raises(ingest.BudgetPaused):
            s.check()
        new = datetime.now(UTC) + timedelta(seconds=1)
        rt.guards.apply_status(SessionStatus(session_id="s-8", state=SessionState.ACTIVE, updated_at=new))
        assert s.check() is SessionState.ACTIVE
    assert len(warned) == 2


def test_local_token_cap_refuses_before_any_event(hook) -> None:
    hook()
    with ingest.session(session_id="s-9", agent_type="a", token_cap=10_000) as s:
        s.record_llm_call("openai", "gpt-4o", 6000, 1000)
        with pytest.raises(ingest.BudgetExceeded) as stop, s.llm_call("openai", "gpt-4o", 2000, 1500):
            pytest.fail("over the cap: must not start")
        assert stop.value.policy_id == ingest.LOCAL_CAP_POLICY
        assert (stop.value.limit, stop.value.spend) == (10_000, 7000)
        with s.llm_call("openai", "gpt-4o", 1000, 1500) as call:
            call.settle(input_tokens=1500, output_tokens=1500)
        with pytest.raises(ingest.BudgetExceeded):
            s.check()
    assert [e["kind"] for e in spooled_events()] == ["llm_call", "call_started", "llm_call"]


def test_queue_full_spills_to_the_spool_in_the_agent_thread(hook) -> None:
    hook(queue_size=1)
    with ingest.session(session_id="s-10", agent_type="a") as s:
        for i in range(200):
            s.record_llm_call("openai", "gpt-4o", i, 1)
    events = spooled_events()
    assert sorted(e["input_tokens"] for e in events) == list(range(200))
    stats = ingest.stats()
    assert stats.recorded == 200 and stats.queue_full > 0 and stats.dropped == 0


def test_spool_bound_is_counted_and_logged(hook, caplog: pytest.LogCaptureFixture) -> None:
    hook(spool_max_events=50)
    with ingest.session(session_id="s-11", agent_type="a") as s:
        for i in range(80):
            s.record_llm_call("openai", "gpt-4o", i, 1)
    assert len(spooled_events()) == 50
    stats = ingest.stats()
    assert (stats.recorded, stats.dropped, stats.pending) == (80, 30, 50)
    assert stats.spool_full >= 1
    assert "spool full" in caplog.text


def test_spool_survives_reopen_and_is_claimed_by_one_process_at_a_time(tmp_path: Path) -> None:
    first = Spool(tmp_path, max_events=100, max_bytes=1 << 20)
    assert first.append([("t", b"k", b"v%d" % i, False) for i in range(5)]) == 5
    other = Spool(tmp_path, max_events=100, max_bytes=1 << 20)
    assert other.path != first.path and other.count == 0
    first.delete([1, 2], 4)
    first.close()
    again = Spool(tmp_path, max_events=100, max_bytes=1 << 20)
    assert again.path == first.path
    assert [(r.id, r.value) for r in again.read_after(0, 10)] == [(3, b"v2"), (4, b"v3"), (5, b"v4")]
    assert (again.count, again.bytes, again.inherited_upto) == (3, 6, 5)
    assert again.append([("t", None, b"x", False)]) == 1
    assert again.read_after(5, 10)[0].id == 6
    again.close()
    other.close()


def test_a_new_spool_adopts_every_orphaned_spool_file(tmp_path: Path) -> None:
    first = Spool(tmp_path, max_events=100, max_bytes=1 << 20)
    second = Spool(tmp_path, max_events=100, max_bytes=1 << 20)
    busy = Spool(tmp_path, max_events=100, max_bytes=1 << 20)  # stays open: a live process
    first.append([("t", b"a", b"a%d" % i, False) for i in range(3)])
    second.append([("t", b"b", b"b%d" % i, False) for i in range(4)])
    busy.append([("t", b"c", b"c0", False)])
    first.close()
    second.close()
    a, b = [b"a0", b"a1", b"a2"], [b"b0", b"b1", b"b2", b"b3"]
    heir = Spool(tmp_path, max_events=100, max_bytes=1 << 20)
    own, orphan, expected = (first, second, a + b) if heir.path == first.path else (second, first, b + a)
    assert heir.path == own.path
    assert heir.adopted == len(expected) - (3 if own is first else 4)
    assert [r.value for r in heir.read_after(0, 100)] == expected  # its own rows first, then the orphan's
    assert (heir.count, heir.inherited_upto) == (7, 7)
    assert not orphan.path.exists() and busy.path.exists()
    assert sorted(p.name for p in tmp_path.glob("*.sqlite")) == sorted([heir.path.name, busy.path.name])
    heir.close()
    busy.close()


def test_configure_reads_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ingest.config import build_config

    monkeypatch.setenv("AGENTLEDGER_KAFKA_BOOTSTRAP", "example:9092")
    monkeypatch.setenv("AGENTLEDGER_TOPIC_PREFIX", "x.")
    monkeypatch.setenv("AGENTLEDGER_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv("AGENTLEDGER_QUEUE_SIZE", "7")
    monkeypatch.setenv("AGENTLEDGER_MODE", "development")
    config = build_config({"topic_prefix": "explicit."})
    assert (config.bootstrap_servers, config.topic_prefix, config.spool_dir) == ("example:9092", "explicit.", tmp_path)
    assert (config.queue_size, config.mode) == (7, "development")
    monkeypatch.setenv("AGENTLEDGER_MODE", "prod")
    with pytest.raises(ValueError, match="mode"):
        build_config({})


def test_cancelled_async_call_is_aborted(hook) -> None:
    import asyncio

    hook()

    async def agent(s: ingest.Session, started: asyncio.Event) -> None:
        async with s.llm_call("anthropic", "claude-sonnet-4", max_output_tokens=64):
            started.set()
            await asyncio.sleep(10)

    async def main() -> None:
        async with ingest.session(session_id="s-12", agent_type="a") as s:
            started = asyncio.Event()
            task = asyncio.create_task(agent(s, started))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    started, aborted = spooled_events()
    assert (started["kind"], aborted["kind"]) == ("call_started", "call_aborted")
    assert aborted["settles"] == started["event_id"]
    assert aborted["reason"] == "exception: CancelledError"


def test_threads_sharing_a_session_get_distinct_steps(hook) -> None:
    import threading

    hook(queue_size=100_000)
    s = ingest.session(session_id="s-13", agent_type="a")
    ids: list[str] = []

    def work() -> None:
        mine = [s.record_llm_call("openai", "gpt-4o", 1, 1) for _ in range(500)]
        ids.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 4000
    assert sorted(e["step"] for e in spooled_events()) == list(range(4000))
    assert s.used_tokens == 8000
    assert ingest.stats().recorded == 4000


def test_unusable_spool_folder_falls_back_instead_of_failing(hook, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    hook(spool_dir=blocker / "spool")
    with ingest.session(session_id="s-14", agent_type="a") as s:
        s.record_llm_call("openai", "gpt-4o", 1, 1)
    rt = runtime.current()
    assert rt is not None and "agentledger-spool-" in str(rt.delivery.spool.path)
    assert len(spooled_events()) == 1


def test_murmur2_matches_kafka_reference_values() -> None:
    # values from Kafka's own UtilsTest.testMurmur2
    assert murmur2(b"21") == (-973932308) & 0xFFFFFFFF
    assert murmur2(b"foobar") == (-790332482) & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-long-string") == (-985981536) & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-longer-string") == (-1486304829) & 0xFFFFFFFF
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == (-58897971) & 0xFFFFFFFF
    assert murmur2(b"abc") == 479470107
