"""The retry policy as functions, and Dispatcher.deliver over a mock transport (no socket opened)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from agentledger.settings import Settings
from processors.alerts.deliveries import MemoryDeliveries
from processors.alerts.destinations import PinnedTransport
from processors.alerts.dispatcher import Dispatcher, targets_of
from processors.alerts.retry import RetryPolicy, Verdict, backoff_s, classify, next_delay, retry_after_s
from schemas.deliveries import AlertDelivery
from tests.processors.alerts.alerts import make_alert

pytestmark = pytest.mark.unit

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, Verdict.DELIVERED), (201, Verdict.DELIVERED), (204, Verdict.DELIVERED), (299, Verdict.DELIVERED),
     (301, Verdict.FAILED), (302, Verdict.FAILED), (307, Verdict.FAILED), (308, Verdict.FAILED),
     (400, Verdict.FAILED), (401, Verdict.FAILED), (403, Verdict.FAILED), (404, Verdict.FAILED),
     (408, Verdict.FAILED), (410, Verdict.FAILED), (429, Verdict.RETRY), (500, Verdict.RETRY),
     (502, Verdict.RETRY), (503, Verdict.RETRY), (504, Verdict.RETRY), (100, Verdict.FAILED)],
)  # fmt: skip
def test_classify(status: int, verdict: Verdict) -> None:
    assert classify(status) is verdict


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(max_attempts=10, initial_s=0.5, max_s=4.0)
    assert [backoff_s(policy, n, lambda: 0.0) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [backoff_s(policy, n, lambda: 1.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff_s(policy, 2, lambda: 0.5) == 0.75


def test_retry_after() -> None:
    assert retry_after_s("7", NOW) == 7.0
    assert retry_after_s(" 0 ", NOW) == 0.0
    assert retry_after_s("Mon, 01 Jun 2026 12:00:30 GMT", NOW) == 30.0
    assert retry_after_s("Mon, 01 Jun 2026 11:00:00 GMT", NOW) == 0.0  # in the past
    assert retry_after_s("soon", NOW) is None
    assert retry_after_s("-3", NOW) is None
    assert retry_after_s(None, NOW) is None


def test_next_delay() -> None:
    policy = RetryPolicy(max_attempts=3, initial_s=1.0, max_s=10.0, retry_after_max_s=20.0)
    assert next_delay(policy, 1, 500, None, NOW, lambda: 0.0) == 0.5
    assert next_delay(policy, 2, None, None, NOW, lambda: 1.0) == 2.0
    assert next_delay(policy, 3, 500, None, NOW, lambda: 0.0) is None  # attempts used up
    assert next_delay(policy, 1, 429, "15", NOW) == 15.0
    assert next_delay(policy, 1, 429, "600", NOW) == 20.0  # capped
    assert next_delay(policy, 1, 429, "garbage", NOW, lambda: 0.0) == 0.5  # falls back to backoff
    assert next_delay(policy, 1, 503, "15", NOW, lambda: 0.0) == 0.5  # Retry-After is only read on 429


Handler = Callable[[httpx.Request], httpx.Response]


class Script:
    """A receiver behind a mock transport: answers from a list, records requests and their times."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        self.times.append(time.monotonic())
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def dispatcher_for(
    script: Script, urls: list[dict[str, Any]] | None = None, **overrides: Any
) -> tuple[Dispatcher, MemoryDeliveries]:
    values: dict[str, Any] = {
        "alert_webhooks": urls or [{"url": "http://127.0.0.1:9/hook"}],
        "alert_allow_private_destinations": True,
        "alert_backoff_initial_s": 0.01,
        "alert_backoff_max_s": 0.05,
        "alert_max_attempts": 4,
    }
    values.update(overrides)
    settings = Settings(**values)
    transport = PinnedTransport(allow_private=True, resolver=lambda h, p: [], inner=httpx.MockTransport(script))
    client = httpx.Client(transport=transport, follow_redirects=False, trust_env=False)
    recorder = MemoryDeliveries()
    return Dispatcher(settings, recorder, client=client, stop=threading.Event()), recorder


def summary(records: list[AlertDelivery]) -> list[tuple[int, bool, bool, int | None]]:
    return [(r.attempt, r.ok, r.final, r.status_code) for r in records]


def test_500_twice_then_200_is_three_attempts_and_one_success() -> None:
    script = Script(httpx.Response(500, text="boom"), httpx.Response(503), httpx.Response(200))
    dispatcher, recorder = dispatcher_for(script)
    assert dispatcher.deliver(make_alert("al-1")) is True
    assert summary(recorder.records) == [(1, False, False, 500), (2, False, False, 503), (3, True, True, 200)]
    assert recorder.records[0].error == "HTTP 500: boom"
    assert (
        all(r.next_attempt_at is not None for r in recorder.records[:2]) and recorder.records[2].next_attempt_at is None
    )
    assert [r.headers["idempotency-key"] for r in script.requests] == ["al-1"] * 3
    assert len({r.content for r in script.requests}) == 1
    # Delivered: the same alert again sends nothing.
    assert dispatcher.deliver(make_alert("al-1")) is True
    assert len(script.requests) == 3 and len(recorder.records) == 3


def test_gives_up_after_max_attempts_on_timeouts_and_connection_errors() -> None:
    script = Script(
        httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(502), httpx.RemoteProtocolError("eof")
    )
    dispatcher, recorder = dispatcher_for(script)
    assert dispatcher.deliver(make_alert()) is True
    assert summary(recorder.records) == [
        (1, False, False, None),
        (2, False, False, None),
        (3, False, False, 502),
        (4, False, True, None),
    ]
    assert recorder.records[0].error == "connection: ConnectError: refused"
    assert recorder.records[1].error == "timeout: ReadTimeout: slow"
    assert recorder.delivered("al-1", recorder.records[0].destination) is False


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_4xx_is_not_retried(status: int) -> None:
    script = Script(httpx.Response(status))
    dispatcher, recorder = dispatcher_for(script)
    assert dispatcher.deliver(make_alert()) is True
    assert summary(recorder.records) == [(1, False, True, status)]


def test_redirect_is_not_followed() -> None:
    script = Script(httpx.Response(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}))
    dispatcher, recorder = dispatcher_for(script)
    assert dispatcher.deliver(make_alert()) is True
    assert summary(recorder.records) == [(1, False, True, 302)]
    assert recorder.records[0].error == "redirect (302) not followed"
    assert [str(r.url) for r in script.requests] == ["http://127.0.0.1:9/hook"]


def test_429_honours_retry_after() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(200))
    dispatcher, recorder = dispatcher_for(script)
    assert dispatcher.deliver(make_alert()) is True
    assert summary(recorder.records) == [(1, False, False, 429), (2, True, True, 200)]
    first = recorder.records[0]
    assert first.next_attempt_at is not None and first.next_attempt_at - first.attempted_at == timedelta(seconds=1)
    assert script.times[1] - script.times[0] >= 0.95


def test_429_retry_after_is_capped() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "3600"}), httpx.Response(200))
    dispatcher, recorder = dispatcher_for(script, alert_retry_after_max_s=0.2)
    assert dispatcher.deliver(make_alert()) is True
    first = recorder.records[0]
    assert first.next_attempt_at is not None and first.next_attempt_at - first.attempted_at == timedelta(seconds=0.2)


def test_refused_destination_is_recorded_once_and_never_contacted() -> None:
    script = Script()
    dispatcher, recorder = dispatcher_for(script, urls=[{"url": "http://127.0.0.1:9/hook"}])
    dispatcher.client = httpx.Client(  # the same settings, but the transport now refuses private addresses
        transport=PinnedTransport(allow_private=False, resolver=lambda h, p: [], inner=httpx.MockTransport(script)),
        trust_env=False,
    )
    assert dispatcher.deliver(make_alert()) is True
    assert summary(recorder.records) == [(1, False, True, None)]
    assert recorder.records[0].error == "refused (loopback): 127.0.0.1 is a loopback address"
    assert script.requests == []


def test_each_destination_gets_its_format_and_its_own_record() -> None:
    script = Script(httpx.Response(200), httpx.Response(500), httpx.Response(204))
    dispatcher, recorder = dispatcher_for(
        script,
        urls=[
            {"url": "http://127.0.0.1:9/json"},
            {"url": "http://127.0.0.1:9/slack", "format": "slack", "name": "ops"},
        ],
    )
    assert dispatcher.deliver(make_alert()) is True
    json_id, slack_id = (t.destination for t in targets_of(dispatcher.settings))
    assert slack_id.startswith("ops#")
    assert [(r.destination, r.format, r.attempt, r.ok) for r in recorder.records] == [
        (json_id, "json", 1, True),
        (slack_id, "slack", 1, False),
        (slack_id, "slack", 2, True),
    ]
    assert [r.url.path for r in script.requests] == ["/json", "/slack", "/slack"]
    assert b'"blocks"' in script.requests[2].content and b'"blocks"' not in script.requests[0].content


def test_attempt_numbers_continue_from_the_record() -> None:
    script = Script(httpx.Response(500), httpx.Response(200))
    dispatcher, recorder = dispatcher_for(script)
    destination = dispatcher.targets[0].destination
    recorder.learn(
        AlertDelivery(
            alert_id="al-1", policy_id="team-cap", destination=destination, format="json", attempt=4,
            attempted_at=NOW, ok=False, final=True, status_code=503, latency_ms=1.0,
        )
    )  # fmt: skip
    assert dispatcher.deliver(make_alert("al-1")) is True
    assert [r.attempt for r in recorder.records] == [5, 6]


def test_stop_during_backoff_leaves_the_alert_unfinished() -> None:
    script = Script(httpx.Response(500), httpx.Response(200))
    dispatcher, recorder = dispatcher_for(script, alert_backoff_initial_s=30, alert_backoff_max_s=30)
    threading.Timer(0.2, dispatcher.stop.set).start()
    started = time.monotonic()
    assert dispatcher.deliver(make_alert()) is False
    assert time.monotonic() - started < 5
    assert summary(recorder.records) == [(1, False, False, 500)]
