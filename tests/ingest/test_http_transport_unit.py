"""The HTTP transport's decisions, against an httpx.MockTransport stand-in of POST /v1/events."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import ingest
from ingest import delivery as delivery_module
from ingest.config import IngestConfig, build_config
from ingest.delivery import encode_event
from ingest.http_transport import HttpSender, events_url, retry_after_s
from ingest.signal_stream import server_sent_events, stream_url
from ingest.spool import Spool
from ingest.stats import Stats
from schemas.events import derive_event_id

pytestmark = pytest.mark.unit

Handler = Callable[[httpx.Request], httpx.Response]


def fields(step: int, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "event_id": derive_event_id("wf-http", step, "llm"),
        "kind": "llm_call",
        "occurred_at": "2026-03-01T12:00:00+00:00",
        "session_id": "sess-http",
        "workflow_id": "wf-http",
        "step": step,
        "step_name": "llm",
        "agent_type": "pr-reviewer",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 100 + step,
        "output_tokens": step,
    }
    values.update(extra)
    return values


def accept_all(request: httpx.Request, reject: Callable[[dict[str, Any]], bool] = lambda e: False) -> httpx.Response:
    """What the API answers: each item accepted, or rejected with field and code only."""
    events = orjson.loads(request.content)
    accepted = [{"index": i, "event_id": e["event_id"]} for i, e in enumerate(events) if not reject(e)]
    rejected = [
        {
            "index": i,
            "event_id": e["event_id"],
            "errors": [{"code": "greater_than_equal", "field": "input_tokens", "message": "must be >= 0"}],
        }
        for i, e in enumerate(events)
        if reject(e)
    ]
    if not accepted:
        body = {"error": {"code": "batch_rejected", "field": None, "message": "none", "rejected": rejected}}
        return httpx.Response(422, json=body)
    return httpx.Response(200, json={"accepted": accepted, "rejected": rejected})


class Server:
    """Records every request; answers with whatever `handler` is set to."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.handler: Handler = accept_all

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def posted(self) -> list[list[dict[str, Any]]]:
        return [orjson.loads(r.content) for r in self.requests]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Callable[..., tuple[HttpSender, Spool, Stats, Server]]]:
    spools: list[Spool] = []

    def make(**config: Any) -> tuple[HttpSender, Spool, Stats, Server]:
        cfg = IngestConfig(transport="http", api_url="https://ledger.test", api_key="alk_test", **config)
        spool = Spool(tmp_path / f"spool-{len(spools)}", max_events=10_000, max_bytes=1 << 30)
        spools.append(spool)
        stats, server = Stats(), Server()
        return HttpSender(cfg, stats, spool, transport=httpx.MockTransport(server)), spool, stats, server

    yield make
    for spool in spools:
        spool.close()


def fill(spool: Spool, steps: range, **extra: Any) -> None:
    spool.append([("t", *encode_event(fields(step, **extra)), False) for step in steps])


def pump_until_empty(sender: HttpSender, spool: Spool, rounds: int = 100) -> None:
    for _ in range(rounds):
        sender._next_try = 0.0  # skip the backoff: these tests are about decisions, not waiting
        sender.pump()
        if spool.count == 0:
            return
    raise AssertionError(f"{spool.count} rows left")


def test_batches_in_order_with_the_key_and_delete_what_was_accepted(rig) -> None:
    sender, spool, stats, server = rig(http_batch_size=4)
    fill(spool, range(10))
    pump_until_empty(sender, spool)
    batches = server.posted()
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [e["step"] for b in batches for e in b] == list(range(10))
    assert all(r.headers["authorization"] == "Bearer alk_test" for r in server.requests)
    assert all(str(r.url) == "https://ledger.test/v1/events" for r in server.requests)
    assert stats.get("delivered") == 10 and stats.get("invalid") == 0
    assert spool.count == 0 and spool.bytes == 0


def test_batches_stay_under_the_byte_limit(rig) -> None:
    sender, spool, _, server = rig(http_max_bytes=2048)
    fill(spool, range(20), tags={f"k{i}": "x" * 100 for i in range(3)})
    pump_until_empty(sender, spool)
    assert all(len(r.content) <= 2048 for r in server.requests)
    assert sum(len(b) for b in server.posted()) == 20


def test_rejected_items_are_dropped_counted_and_logged_without_values(rig, caplog) -> None:
    sender, spool, stats, server = rig()
    server.handler = lambda r: accept_all(r, reject=lambda e: e["step"] % 3 == 0)
    fill(spool, range(9), tags={"secret": "canary-value-42"})
    with caplog.at_level(logging.ERROR, logger="agentledger.ingest"):
        pump_until_empty(sender, spool)
    assert stats.get("delivered") == 6 and stats.get("invalid") == 3
    assert "input_tokens: greater_than_equal" in caplog.text
    assert "canary-value-42" not in caplog.text and "must be >= 0" not in caplog.text


def test_a_batch_rejected_as_a_whole_is_dropped_as_invalid(rig) -> None:
    sender, spool, stats, server = rig()
    server.handler = lambda r: accept_all(r, reject=lambda e: True)
    fill(spool, range(3))
    pump_until_empty(sender, spool)
    assert stats.get("invalid") == 3 and stats.get("delivered") == 0


@pytest.mark.parametrize(
    "answer",
    [
        lambda r: httpx.Response(503, headers={"Retry-After": "7"}, json={"error": {"code": "kafka_unavailable"}}),
        lambda r: httpx.Response(500, text="boom"),
        lambda r: httpx.Response(502, text="<html>bad gateway</html>"),
        lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)),
        lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=r)),
    ],
    ids=["503-retry-after", "500", "502-html", "connect-error", "read-timeout"],
)
def test_outages_keep_every_event_and_retry_later(rig, answer: Handler) -> None:
    sender, spool, stats, server = rig()
    server.handler = answer
    fill(spool, range(5))
    sender.pump()
    assert spool.count == 5 and sender.down
    assert stats.get("spooled") == 5
    assert sender.pump() == 0 and len(server.requests) == 1  # backing off: no second POST yet
    assert 0 < sender._next_try - time.monotonic() <= 7.0
    server.handler = accept_all
    pump_until_empty(sender, spool)
    assert not sender.down
    assert stats.get("delivered") == 5 and stats.get("replayed") == 5
    assert [e["step"] for e in server.posted()[-1]] == list(range(5))


def test_retry_after_is_honoured(rig) -> None:
    sender, spool, _, server = rig()
    server.handler = lambda r: httpx.Response(503, headers={"Retry-After": "12"})
    fill(spool, range(1))
    sender.pump()
    assert 11 < sender._next_try - time.monotonic() <= 12
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_s("soon") is None and retry_after_s("100000") == 300.0


def test_backoff_doubles_up_to_a_cap_and_resets_after_success(rig) -> None:
    sender, spool, _, server = rig()
    server.handler = lambda r: httpx.Response(500)
    fill(spool, range(1))
    waits = []
    for _ in range(9):
        sender._next_try = 0.0
        sender.pump()
        waits.append(round(sender._next_try - time.monotonic(), 1))
    assert waits[:4] == [0.5, 1.0, 2.0, 4.0] and max(waits) == 30.0
    server.handler = accept_all
    pump_until_empty(sender, spool)
    assert sender._backoff == 0.5


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refused_key_keeps_events_logs_loudly_and_retries_slowly(rig, caplog, status: int) -> None:
    sender, spool, stats, server = rig(http_auth_retry_s=45.0)
    server.handler = lambda r: httpx.Response(status, json={"error": {"code": "unauthenticated"}})
    fill(spool, range(4))
    with caplog.at_level(logging.ERROR, logger="agentledger.ingest"):
        sender.pump()
    assert spool.count == 4 and stats.get("invalid") == 0
    assert f"answered {status}" in caplog.text and "alk_test" not in caplog.text
    assert 44 < sender._next_try - time.monotonic() <= 45
    server.handler = accept_all  # the key was fixed
    pump_until_empty(sender, spool)
    assert stats.get("delivered") == 4


def test_413_halves_the_batch_and_a_single_oversize_event_is_dropped(rig) -> None:
    sender, spool, stats, server = rig(http_batch_size=8)
    accepted: list[int] = []

    def limit(request: httpx.Request) -> httpx.Response:
        events = orjson.loads(request.content)
        if len(events) > 2 or any(e["step"] == 5 for e in events):
            return httpx.Response(413, json={"error": {"code": "payload_too_large"}})
        accepted.extend(e["step"] for e in events)
        return accept_all(request)

    server.handler = limit
    fill(spool, range(8))
    pump_until_empty(sender, spool)
    assert accepted == [0, 1, 2, 3, 4, 6, 7]
    assert stats.get("delivered") == 7 and stats.get("invalid") == 1


def test_config_from_environment_and_defaults() -> None:
    env = {
        "AGENTLEDGER_TRANSPORT": "HTTP",
        "AGENTLEDGER_API_URL": "https://ledger.example.com/",
        "AGENTLEDGER_API_KEY": "alk_secret",
        "AGENTLEDGER_HTTP_BATCH_SIZE": "250",
    }
    config = build_config({}, env)
    assert config.transport == "http" and config.http_batch_size == 250
    assert config.listen_signals is True  # from the API's signal stream
    assert "alk_secret" not in repr(config)
    assert build_config({"listen_signals": False}, env).listen_signals is False
    assert build_config({}, {}).listen_signals is True and build_config({}, {}).transport == "kafka"
    assert events_url("https://ledger.example.com/") == "https://ledger.example.com/v1/events"
    assert events_url("https://x/api/v1/events") == "https://x/api/v1/events"
    with pytest.raises(ValueError, match="api_url"):
        build_config({"transport": "http"}, {})
    with pytest.raises(ValueError, match="transport"):
        build_config({"transport": "carrier-pigeon"}, {})


def test_the_hook_over_http_end_to_end_with_a_stand_in(hook, monkeypatch) -> None:
    server = Server()

    def make_sender(config: IngestConfig, stats: Stats, spool: Spool) -> HttpSender:
        return HttpSender(config, stats, spool, transport=httpx.MockTransport(server))

    monkeypatch.setattr(delivery_module, "make_sender", make_sender)
    # the stand-in serves POST /v1/events only: no signal stream here (tests/ingest/test_hook_http.py has it)
    config = hook(transport="http", api_url="https://ledger.test", api_key="alk_x", listen_signals=False)
    assert config.listen_signals is False
    with ingest.session(session_id="s-http", agent_type="a", team="t") as s:
        for n in range(25):
            s.record_llm_call("openai", "gpt-4o", input_tokens=n, output_tokens=1)
    assert ingest.flush(timeout=10)
    posted = [e for b in server.posted() for e in b]
    assert [e["input_tokens"] for e in posted] == list(range(25))
    assert ingest.stats().delivered == 25 and ingest.stats().pending == 0


def test_server_sent_events_parsing() -> None:
    lines = [": ping", "event: status", 'data: {"a": 1}', "", "data: x", "data: y", "", "event: ready", "data:{}", ""]
    assert list(server_sent_events(lines)) == [("status", '{"a": 1}'), ("message", "x\ny"), ("ready", "{}")]
    assert list(server_sent_events(["event: signal", "data: cut off"])) == []  # no blank line: not dispatched
    assert stream_url("https://x/api/") == "https://x/api/v1/signals/stream"
    assert stream_url("https://x/v1/events") == "https://x/v1/signals/stream"
