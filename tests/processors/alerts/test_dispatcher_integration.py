"""The alert dispatcher on the real broker, delivering to a receiver on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Message

from agentledger.settings import Settings
from processors.alerts.dispatcher import AlertConsumer, consumer_group
from processors.alerts.formats import slack_message
from schemas.budgets import Alert
from tests.processors.alerts.alerts import make_alert
from tests.processors.alerts.conftest import Answer, Receiver, Running, produce_alerts
from tests.processors.conftest import TopicReader

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def webhook_settings(factory: Callable[..., Settings], receiver: Receiver, *paths: tuple[str, str]) -> Settings:
    return factory(
        alert_webhooks=[{"url": receiver.url(path), "format": fmt} for path, fmt in paths],
        alert_allow_private_destinations=True,
        alert_backoff_initial_s=0.05,
        alert_backoff_max_s=0.2,
        alert_max_attempts=4,
        partitions=2,
    )


def alerts(count: int, prefix: str = "al", policies: int = 3) -> list[Alert]:
    return [make_alert(f"{prefix}-{i}", policy_id=f"policy-{i % policies}") for i in range(count)]


def keys(received: list[Any]) -> Counter[str]:
    return Counter(r.headers["idempotency-key"] for r in received)


def deliveries(reader: TopicReader, count: int) -> list[dict[str, Any]]:
    return reader.wait_for(count, timeout=30, settle=2)


def test_each_alert_reaches_each_destination_once_despite_duplicate_events(
    settings_factory: Callable[..., Settings],
    receiver: Receiver,
    dispatcher_factory: Callable[..., Running],
    reader_factory: Callable[[Settings, str], TopicReader],
) -> None:
    settings = webhook_settings(settings_factory, receiver, ("/json", "json"), ("/slack", "slack"))
    batch = alerts(6)
    produce_alerts(settings, batch + batch[::-1])  # every alert event twice
    running = dispatcher_factory(settings)
    json_received = receiver.wait_for("/json", 6)
    slack_received = receiver.wait_for("/slack", 6, settle=0)
    assert running.error is None
    assert keys(json_received) == Counter({a.alert_id: 1 for a in batch})
    assert keys(slack_received) == Counter({a.alert_id: 1 for a in batch})
    by_id = {a.alert_id: a for a in batch}
    for r in json_received:
        assert Alert.model_validate_json(r.body) == by_id[r.headers["idempotency-key"]]
        assert r.headers["content-type"] == "application/json"
    for r in slack_received:
        assert orjson.loads(r.body) == slack_message(by_id[r.headers["idempotency-key"]])
    records = deliveries(reader_factory(settings, "alert-deliveries"), 12)
    assert len(records) == 12
    assert {(r["alert_id"], r["format"], r["attempt"], r["ok"], r["final"], r["status_code"]) for r in records} == {
        (a.alert_id, fmt, 1, True, True, 200) for a in batch for fmt in ("json", "slack")
    }
    assert all("127.0.0.1" in r["destination"] and "/json" not in r["destination"] for r in records)


def test_a_restart_mid_stream_sends_nothing_twice(
    settings_factory: Callable[..., Settings],
    receiver: Receiver,
    dispatcher_factory: Callable[..., Running],
) -> None:
    settings = webhook_settings(settings_factory, receiver, ("/hook", "json"))
    receiver.defaults["/hook"] = Answer(delay_s=0.3)
    first = alerts(10)
    produce_alerts(settings, first)
    running = dispatcher_factory(settings)
    receiver.wait_for("/hook", 3, settle=0)
    running.halt()
    assert running.error is None
    delivered_before = len(receiver.at("/hook"))
    assert 3 <= delivered_before < 10, "the restart was not mid-stream"
    # The same events again (a producer's retry, a replay) and new ones, to a new dispatcher.
    later = alerts(5, prefix="late")
    produce_alerts(settings, first + later)
    receiver.defaults["/hook"] = Answer()
    running = dispatcher_factory(settings)
    received = receiver.wait_for("/hook", 15)
    assert running.error is None
    assert keys(received) == Counter({a.alert_id: 1 for a in first + later})


class CrashOnThirdCommit(AlertConsumer):
    """Dies after the third alert was delivered and recorded, before its offset is committed."""

    commits = 0

    def _commit(self, consumer: Any, msg: Message) -> None:
        type(self).commits += 1
        if type(self).commits == 3:
            raise RuntimeError("simulated crash before commit")
        super()._commit(consumer, msg)


def test_a_crash_between_delivery_and_commit_does_not_send_again(
    settings_factory: Callable[..., Settings],
    receiver: Receiver,
    dispatcher_factory: Callable[..., Running],
    reader_factory: Callable[[Settings, str], TopicReader],
) -> None:
    settings = webhook_settings(settings_factory, receiver, ("/hook", "json"))
    batch = alerts(5, policies=1)  # one key, one partition: delivered in order
    produce_alerts(settings, batch)
    crashed = dispatcher_factory(settings, CrashOnThirdCommit)
    crashed.thread.join(60)
    assert isinstance(crashed.error, RuntimeError)
    assert keys(receiver.at("/hook")) == Counter({"al-0": 1, "al-1": 1, "al-2": 1})
    running = dispatcher_factory(settings)  # resumes at al-2: uncommitted, but recorded as delivered
    received = receiver.wait_for("/hook", 5)
    assert running.error is None
    assert keys(received) == Counter({a.alert_id: 1 for a in batch})
    records = deliveries(reader_factory(settings, "alert-deliveries"), 5)
    assert sorted((r["alert_id"], r["attempt"], r["ok"]) for r in records) == [(a.alert_id, 1, True) for a in batch]


def test_500_twice_then_200_is_three_attempts_and_one_success(
    settings_factory: Callable[..., Settings],
    receiver: Receiver,
    dispatcher_factory: Callable[..., Running],
    reader_factory: Callable[[Settings, str], TopicReader],
) -> None:
    settings = webhook_settings(settings_factory, receiver, ("/flaky", "json"))
    receiver.on("/flaky", Answer(500), Answer(500), Answer(200))
    produce_alerts(settings, [make_alert("al-flaky")])
    dispatcher_factory(settings)
    received = receiver.wait_for("/flaky", 3)
    assert [r.headers["idempotency-key"] for r in received] == ["al-flaky"] * 3
    records = deliveries(reader_factory(settings, "alert-deliveries"), 3)
    assert [(r["attempt"], r["status_code"], r["ok"], r["final"]) for r in records] == [
        (1, 500, False, False),
        (2, 500, False, False),
        (3, 200, True, True),
    ]
    assert [r["error"] for r in records] == ["HTTP 500:", "HTTP 500:", ""]
    assert all(r["latency_ms"] > 0 for r in records)
    assert "next_attempt_at" in records[0] and "next_attempt_at" not in records[2]


def test_a_redirect_is_not_followed(
    settings_factory: Callable[..., Settings],
    receiver: Receiver,
    dispatcher_factory: Callable[..., Running],
    reader_factory: Callable[[Settings, str], TopicReader],
) -> None:
    settings = webhook_settings(settings_factory, receiver, ("/moved", "json"))
    receiver.defaults["/moved"] = Answer(302, {"Location": receiver.url("/target")})
    produce_alerts(settings, [make_alert("al-moved")])
    dispatcher_factory(settings)
    assert len(receiver.wait_for("/moved", 1)) == 1
    records = deliveries(reader_factory(settings, "alert-deliveries"), 1)
    assert [(r["attempt"], r["status_code"], r["ok"], r["final"], r["error"]) for r in records] == [
        (1, 302, False, True, "redirect (302) not followed")
    ]
    assert receiver.at("/target") == []
    assert [r.path for r in receiver.received] == ["/moved"]


def test_the_cli_command_delivers_and_stops_on_sigterm(
    settings_factory: Callable[..., Settings], receiver: Receiver, tmp_path: Path
) -> None:
    settings = webhook_settings(settings_factory, receiver, ("/cli", "slack"))
    produce_alerts(settings, [make_alert("al-cli")])
    env = settings.environment()
    log_path = tmp_path / "dispatcher.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentledger.cli", "dispatcher"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            received = receiver.wait_for("/cli", 1, settle=1)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
    output = log_path.read_text(errors="replace")
    assert [r.headers["idempotency-key"] for r in received] == ["al-cli"], output
    assert set(orjson.loads(received[0].body)) == {"text", "blocks"}
    assert code == 0, output
    assert consumer_group(settings) == f"{settings.topic_prefix}alert-dispatcher"


def test_refused_destination_from_settings_fails_fast(settings_factory: Callable[..., Settings]) -> None:
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"alert_webhooks\[0\]\.url: 127\.0\.0\.1 is a loopback address"):
        settings_factory(alert_webhooks=[{"url": "http://127.0.0.1:1/x"}])
    assert time.monotonic() - started < 5
