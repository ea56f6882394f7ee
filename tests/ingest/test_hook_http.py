"""The hook over HTTP, for real: hook → uvicorn serving the API (auth required) → Kafka.

No mocks: the real app with a chDB folder and a real key, served on a loopback port by
uvicorn in a thread; the shared broker. The server is stopped and restarted mid-run.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

import ingest
from agentledger.settings import Settings
from api.app import create_app
from api.keys import KeyStore
from api.migrations import migrate
from ingest.errors import BudgetExceeded, BudgetPaused
from ingest.signal_stream import server_sent_events
from processors.app import SignalPublisher
from schemas.budgets import Action, Scope, SessionState, Signal
from schemas.events import CostEvent
from schemas.topics import COST_EVENTS, topic_name
from tests.api.conftest import warehouse_factory
from tests.ingest.conftest import read_topic
from tests.ingest.live_api import LiveApi

pytestmark = pytest.mark.integration

__all__ = ["warehouse_factory"]


@pytest.fixture
def live(settings_factory: Callable[..., Settings], warehouse_factory: Callable[..., Any]) -> Iterator[Any]:
    """(settings, server, keys): the API served with auth required; keys made through api.keys."""
    settings = settings_factory(auth="required")
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    store = KeyStore(wh, settings.database)
    keys = {
        "ingest": store.create(["ingest"], name="hook")[1],
        "payments": store.create(["ingest"], team="payments", name="hook-payments")[1],
        "reader": store.create(["reports:read"], name="reader")[1],
    }
    server = LiveApi(lambda: create_app(settings, wh, with_sink=False))
    server.start()
    try:
        yield settings, server, keys
    finally:
        ingest.close(timeout=1.0)
        server.stop()


def landed(settings: Settings) -> list[CostEvent]:
    messages = read_topic(settings.kafka_bootstrap, topic_name(settings.topic_prefix, COST_EVENTS))
    return [CostEvent.model_validate_json(m.value()) for m in messages]


def test_recorded_events_land_on_cost_events_exactly_once_with_exact_tokens(live, hook) -> None:
    settings, server, keys = live
    config = hook(settings=settings, transport="http", api_url=server.url, api_key=keys["ingest"])
    assert config.listen_signals is True  # from the API's signal stream
    expected: dict[str, tuple[int, int, int]] = {}
    sessions = [ingest.session(session_id=f"http-{i}", agent_type="pr-reviewer", team="payments") for i in range(7)]
    for n in range(1234):  # three batches of up to 500
        event_id = sessions[n % 7].record_llm_call(
            "openai", "gpt-4o", input_tokens=1000 + n, output_tokens=n, cache_read_tokens=n % 5
        )
        expected[event_id] = (1000 + n, n, n % 5)
    assert ingest.flush(timeout=60)
    stats = ingest.stats()
    assert (stats.delivered, stats.invalid, stats.dropped, stats.pending) == (1234, 0, 0, 0)

    events = landed(settings)
    counts = Counter(e.event_id for e in events)
    assert set(counts) == set(expected) and max(counts.values()) == 1
    for e in events:
        assert (e.input_tokens, e.output_tokens, e.cache_read_tokens) == expected[e.event_id]


def test_events_the_key_may_not_send_are_counted_invalid_and_the_rest_delivered(live, hook, caplog) -> None:
    settings, server, keys = live
    hook(settings=settings, transport="http", api_url=server.url, api_key=keys["payments"])
    mine = ingest.session(session_id="pay-1", agent_type="a", team="payments")
    theirs = ingest.session(session_id="srch-1", agent_type="a", team="search", tags={"note": "canary-7f3e"})
    good = [mine.record_llm_call("openai", "gpt-4o", 10 + n, 1) for n in range(5)]
    for n in range(3):
        theirs.record_llm_call("openai", "gpt-4o", 10 + n, 1)
    assert ingest.flush(timeout=30)
    stats = ingest.stats()
    assert (stats.delivered, stats.invalid, stats.pending) == (5, 3, 0)
    assert sorted(e.event_id for e in landed(settings)) == sorted(good)
    assert "team: team_forbidden" in caplog.text and "canary-7f3e" not in caplog.text


def test_a_revoked_or_wrong_key_keeps_every_event(live, hook) -> None:
    settings, server, keys = live
    hook(settings=settings, transport="http", api_url=server.url, api_key=keys["reader"])  # no ingest scope
    s = ingest.session(session_id="kept", agent_type="a", team="payments")
    for n in range(10):
        s.record_llm_call("openai", "gpt-4o", 10 + n, 1)
    assert not ingest.flush(timeout=2)
    stats = ingest.stats()
    assert (stats.delivered, stats.invalid, stats.dropped, stats.pending) == (0, 0, 0, 10)
    assert landed(settings) == []


def test_the_server_stopped_mid_run_then_restarted_loses_and_doubles_nothing(live, hook) -> None:
    settings, server, keys = live
    hook(settings=settings, transport="http", api_url=server.url, api_key=keys["ingest"], http_batch_size=200)
    total = 3000
    recorded: list[str] = []
    half = threading.Event()

    def agent() -> None:
        s = ingest.session(session_id="outage", agent_type="a", team="payments")
        for n in range(total):
            recorded.append(s.record_llm_call("openai", "gpt-4o-mini", 100 + n, 7))
            if n == total // 3:
                half.set()
            if n % 50 == 0:
                time.sleep(0.01)

    thread = threading.Thread(target=agent)
    thread.start()
    assert half.wait(30)
    server.stop()  # as SIGTERM would: requests in flight finish, then the port closes
    time.sleep(2.0)  # connection refused meanwhile: the hook spools and backs off
    outage = ingest.stats()
    thread.join(60)
    assert not thread.is_alive()
    assert ingest.stats().pending > 0
    server.start()
    assert ingest.flush(timeout=90)

    stats = ingest.stats()
    assert (stats.recorded, stats.delivered, stats.dropped, stats.invalid, stats.pending) == (total, total, 0, 0, 0)
    assert stats.replayed > 0 and outage.delivered < total
    events = landed(settings)
    counts = Counter(e.event_id for e in events)
    assert set(counts) == set(recorded) and len(recorded) == total
    assert [eid for eid, c in counts.items() if c > 1] == []
    by_id = {e.event_id: e for e in events}
    assert [by_id[eid].input_tokens for eid in recorded] == [100 + n for n in range(total)]


def _signal(session_id: str, action: Action, policy: str = "cap") -> Signal:
    return Signal(
        signal_id=f"{policy}:{session_id}:{action.value}",
        session_id=session_id,
        action=action,
        policy_id=policy,
        scope=(Scope.SESSION,),
        scope_value=f"session={session_id}",
        spent_tokens=5000,
        spent_cost=Decimal("1.25"),
        limit_tokens=5000,
        reason=f"budget {policy} reached: 5000/5000 tokens",
        issued_at=datetime.now(UTC),
    )


def _wait_stopped(session: ingest.Session, error: type[Exception], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            session.check()
        except error:
            return
        time.sleep(0.01)
    pytest.fail(f"{session.session_id} not stopped by {error.__name__} after {timeout}s")


def test_budget_signals_reach_an_http_agent_through_the_api_stream(live, hook) -> None:
    """No Kafka in the agent: a kill issued before it started (the snapshot) and one issued while
    it runs (the stream) both stop their sessions at the next call; a pause pauses."""
    settings, server, keys = live
    publisher = SignalPublisher(settings)
    publisher.publish(_signal("killed-before", Action.KILL))
    assert publisher.flush(10) == 0
    hook(
        settings=settings,
        bootstrap_servers="127.0.0.1:9",  # nothing there: every signal must come through the API
        transport="http",
        api_url=server.url,
        api_key=keys["ingest"],
        status_wait_s=10.0,
    )
    before = ingest.session(session_id="killed-before", agent_type="a", team="payments")
    with pytest.raises(BudgetExceeded) as info:
        before.check()
    assert info.value.policy_id == "cap"

    running = ingest.session(session_id="running", agent_type="a", team="payments")
    paused = ingest.session(session_id="paused", agent_type="a", team="payments")
    running.record_llm_call("openai", "gpt-4o", 100, 10)
    assert running.check() is SessionState.ACTIVE
    publisher.publish(_signal("running", Action.KILL))
    publisher.publish(_signal("paused", Action.PAUSE))
    assert publisher.flush(10) == 0
    _wait_stopped(paused, BudgetPaused)
    _wait_stopped(running, BudgetExceeded)
    with pytest.raises(BudgetExceeded):
        running.record_llm_call("openai", "gpt-4o", 100, 10)
    assert ingest.session(session_id="other", agent_type="a", team="payments").check() is SessionState.ACTIVE


def test_signal_stream_refuses_team_keys_and_keys_without_ingest(live) -> None:
    _settings, server, keys = live
    for key, status in ((keys["payments"], 403), (keys["reader"], 403), ("alk_wrong", 401)):
        response = httpx.get(f"{server.url}/v1/signals/stream", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert response.status_code == status, response.text
    with httpx.stream(
        "GET", f"{server.url}/v1/signals/stream", headers={"Authorization": f"Bearer {keys['ingest']}"}, timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = server_sent_events(response.iter_lines())
        assert next(events) == ("ready", "{}")  # nothing is stopped yet: an empty snapshot
