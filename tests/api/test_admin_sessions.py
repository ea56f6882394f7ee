"""Sessions, signals and alerts: real topics -> sinks -> chDB -> /v1/sessions and /v1/alerts."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import KeyStore
from api.migrations import migrate
from api.sink import Sink
from api.status_sink import StatusSink
from schemas.budgets import Action, Alert, Scope, SessionState, SessionStatus, Signal, TopSession
from schemas.codec import encode
from schemas.deliveries import AlertDelivery
from schemas.events import CostEvent, EventKind, PricedEvent, derive_event_id
from schemas.topics import ALERT_DELIVERIES, ALERTS, SESSION_STATUS, SIGNALS, topic_name
from tests.api.conftest import BASE_TIME, SinkThread, wait_caught_up

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _signal(session: str, action: Action, n: int, team: str = "payments") -> Signal:
    return Signal(
        signal_id=f"sig-{session}-{action.value}",
        session_id=session,
        action=action,
        policy_id="pay-cap",
        scope=(Scope.TEAM,),
        scope_value=f"team={team}",
        limit_cost=Decimal("1.5"),
        spent_tokens=1000 * n,
        spent_cost=Decimal("1.500000000001"),
        reason=f"budget pay-cap (team={team}, lifetime) reached: cost 1.500000000001 of 1.5",
        trigger_event_id="ab" * 16,
        issued_at=T0 + timedelta(seconds=n),
    )


def _alert(alert_id: str, scope: tuple[Scope, ...], scope_value: str, n: int) -> Alert:
    return Alert(
        alert_id=alert_id,
        policy_id="pay-cap",
        scope=scope,
        scope_value=scope_value,
        threshold=Decimal("0.8"),
        spent_cost=Decimal("1.2"),
        spent_tokens=800,
        limit_cost=Decimal("1.5"),
        top_sessions=(TopSession(session_id="s-pay", spent_cost=Decimal("1.2"), spent_tokens=800),),
        issued_at=T0 + timedelta(minutes=n),
    )


def _send(settings, spec, items) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    for key, model in items:
        producer.produce(topic_name(settings.topic_prefix, spec), encode(model), key=key.encode())
    assert producer.flush(30) == 0


def wait_status_caught_up(settings, timeout: float = 30.0) -> None:
    """Until the status sink's group has committed the end offset of each of its topics."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{settings.sink_group}-status"})
    try:
        tps = []
        for spec in (SIGNALS, SESSION_STATUS, ALERTS, ALERT_DELIVERIES):
            topic = topic_name(settings.topic_prefix, spec)
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                tps.append(TopicPartition(topic, p))
        want = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        deadline = time.monotonic() + timeout
        while True:
            got = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10)}
            if all(got[k] >= high for k, high in want.items() if high > 0):
                return
            assert time.monotonic() < deadline, f"status sink not caught up: {got} vs {want}"
            time.sleep(0.2)
    finally:
        consumer.close()


def _priced(session: str, team: str, step: int, cost: str, kind: EventKind = EventKind.LLM_CALL) -> PricedEvent:
    event = CostEvent(
        event_id=derive_event_id(session, step, "llm"),
        kind=kind,
        occurred_at=BASE_TIME + timedelta(seconds=step),
        session_id=session,
        workflow_id=f"wf-{session}",
        step=step,
        step_name="llm",
        agent_type="pr-reviewer",
        team=team,
        provider="openai",
        model="gpt-4o",
        input_tokens=100,
        output_tokens=10,
    )
    return PricedEvent(
        event=event,
        cost=Decimal(cost),
        list_cost=Decimal(cost),
        price_source="genai-prices",
        price_version="t",
        priced_at=BASE_TIME + timedelta(hours=1),
    )


@pytest.fixture
def loaded(settings_factory, warehouse_factory, produce_priced):
    settings = settings_factory(auth="required", sink_batch_seconds=0.2)
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    store = KeyStore(wh, settings.database, cache_s=0)
    keys = {
        "admin": store.create(["admin"])[1],
        "pay": store.create(["reports:read"], team="payments")[1],
        "search": store.create(["reports:read"], team="search")[1],
    }
    pay = [_priced("s-pay", "payments", i, f"0.{i + 1}00000000001") for i in range(3)]
    reservation = _priced("s-pay", "payments", 9, "5", kind=EventKind.CALL_STARTED)
    search = [_priced("s-src", "search", i, "0.25") for i in range(2)]
    produce_priced(settings, [*pay, reservation, *search, pay[0]])  # pay[0] twice
    warn, kill = _signal("s-pay", Action.WARN, 1), _signal("s-pay", Action.KILL, 2)
    _send(settings, SIGNALS, [("s-pay", warn), ("s-pay", kill), ("s-pay", kill)])  # a replayed kill
    _send(
        settings,
        SESSION_STATUS,
        [
            ("s-pay", SessionStatus(session_id="s-pay", state=SessionState.WARNED, signal=warn, updated_at=warn.issued_at)),
            ("s-pay", SessionStatus(session_id="s-pay", state=SessionState.KILLED, signal=kill, updated_at=kill.issued_at)),
        ],
    )  # fmt: skip
    a_team = _alert("al-team", (Scope.TEAM,), "team=payments", 1)
    a_agent = _alert("al-agent", (Scope.AGENT_TYPE,), "agent_type=pr-reviewer", 2)
    _send(settings, ALERTS, [("pay-cap", a_team), ("pay-cap", a_agent), ("pay-cap", a_team)])
    attempts = [
        AlertDelivery(
            alert_id="al-team",
            policy_id="pay-cap",
            destination="ops#abc",
            format="json",
            attempt=n,
            attempted_at=T0 + timedelta(minutes=1, seconds=n),
            ok=n == 2,
            final=n == 2,
            status_code=500 if n == 1 else 204,
            error="HTTP 500" if n == 1 else "",
            latency_ms=12.5,
        )
        for n in (1, 2)
    ]
    _send(settings, ALERT_DELIVERIES, [("al-team", a) for a in attempts])

    sink, status = SinkThread(Sink(settings, wh)), SinkThread(StatusSink(settings, wh))
    try:
        wait_caught_up(settings)
        wait_status_caught_up(settings)
    finally:
        sink.stop()
        status.stop()
    assert sink.error is None and status.error is None
    return settings, wh, keys


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_session_detail_list_and_alerts_with_team_isolation(loaded):
    settings, wh, keys = loaded
    admin, pay, search = _h(keys["admin"]), _h(keys["pay"]), _h(keys["search"])
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        r = client.get("/v1/sessions/s-pay", headers=admin)
        assert r.status_code == 200, r.text
        body = r.json()
        # 0.1 + 0.2 + 0.3 (+ 3e-12); the duplicate counts once, the reservation not at all
        assert body["cost"] == "0.600000000003"
        assert (body["calls"], body["input_tokens"], body["teams"], body["state"]) == (3, 300, ["payments"], "killed")
        assert body["stopped_by"]["signal_id"] == "sig-s-pay-kill"
        assert body["stopped_by"]["action"] == "kill"
        assert (
            body["stopped_by"]["reason"]
            == "budget pay-cap (team=payments, lifetime) reached: cost 1.500000000001 of 1.5"
        )
        assert body["stopped_by"]["spent_cost"] == "1.500000000001"
        assert [s["signal_id"] for s in body["signals"]] == ["sig-s-pay-warn", "sig-s-pay-kill"]
        assert client.get("/v1/sessions/s-pay", headers=pay).json()["cost"] == "0.600000000003"

        # another team's session does not exist for this key
        r = client.get("/v1/sessions/s-pay", headers=search)
        assert r.status_code == 404 and r.json()["error"]["field"] == "session_id"
        assert client.get("/v1/sessions/s-src", headers=search).json()["cost"] == "0.500000000000"
        assert client.get("/v1/sessions/s-src", headers=search).json()["state"] == "active"
        assert client.get("/v1/sessions/nope", headers=admin).status_code == 404

        listed = client.get("/v1/sessions", headers=admin).json()["sessions"]
        assert [(s["session_id"], s["state"], s["cost"], s["calls"]) for s in listed] == [
            ("s-pay", "killed", "0.600000000003", 3),
            ("s-src", "active", "0.500000000000", 2),
        ]
        killed = client.get("/v1/sessions", params={"state": "killed"}, headers=admin).json()["sessions"]
        assert [s["session_id"] for s in killed] == ["s-pay"]
        assert client.get("/v1/sessions", params={"state": "killed"}, headers=search).json()["sessions"] == []
        assert [s["session_id"] for s in client.get("/v1/sessions", headers=search).json()["sessions"]] == ["s-src"]
        r = client.get("/v1/sessions", params={"team": "payments"}, headers=search)
        assert r.status_code == 403 and r.json()["error"]["field"] == "team"
        by_team = client.get("/v1/sessions", params={"team": "search"}, headers=admin).json()["sessions"]
        assert [s["session_id"] for s in by_team] == ["s-src"]

        alerts = client.get("/v1/alerts", headers=admin).json()["alerts"]
        assert [(a["alert_id"], a["team"]) for a in alerts] == [("al-agent", None), ("al-team", "payments")]
        team_alert = alerts[1]
        assert (team_alert["spent_cost"], team_alert["limit_cost"], team_alert["threshold"]) == (
            "1.200000000000",
            "1.500000000000",
            "0.8",
        )
        assert team_alert["top_sessions"] == [
            {"session_id": "s-pay", "spent_cost": "1.200000000000", "spent_tokens": 800}
        ]
        assert (team_alert["delivery_attempts"], team_alert["deliveries_ok"]) == (2, 1)
        assert [a["alert_id"] for a in client.get("/v1/alerts", headers=pay).json()["alerts"]] == ["al-team"]
        assert client.get("/v1/alerts", headers=search).json()["alerts"] == []
        detail = client.get("/v1/alerts/al-team", headers=pay).json()
        assert [(d["attempt"], d["ok"], d["status_code"]) for d in detail["deliveries"]] == [
            (1, False, 500),
            (2, True, 204),
        ]
        assert client.get("/v1/alerts/al-team", headers=search).status_code == 404
        assert client.get("/v1/alerts/al-agent", headers=pay).status_code == 404


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/sessions", {"state": "dead"}, "state"),
        ("/v1/sessions", {"limit": "0"}, "limit"),
        ("/v1/sessions", {"limit": "1' OR 1=1"}, "limit"),
        ("/v1/sessions", {"offset": "-1"}, "offset"),
        ("/v1/sessions", {"team": "x" * 200}, "team"),
        ("/v1/sessions/" + "s" * 200, {}, "session_id"),
        ("/v1/alerts", {"policy_id": "a b"}, "policy_id"),
        ("/v1/alerts", {"from": "yesterday"}, "from"),
        ("/v1/alerts", {"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "to"),
        ("/v1/alerts", {"limit": "100000"}, "limit"),
    ],
)
def test_sessions_and_alerts_bad_input(settings_factory, warehouse_factory, path, params, field):
    settings = settings_factory(auth="disabled")
    wh = warehouse_factory(settings)
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        r = client.get(path, params=params)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field
