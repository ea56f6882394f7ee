"""POST /v1/events against the real broker: what is posted is what lands on cost-events."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import KeyStore
from api.migrations import migrate
from schemas import codec
from schemas.events import CostEvent, derive_event_id
from schemas.topics import COST_EVENTS, topic_name
from tests.ingest.conftest import kafka_partition, read_topic

pytestmark = pytest.mark.integration


def event(step: int, *, session: str = "sess-a", team: str | None = "payments", **fields) -> dict:
    body = {
        "event_id": derive_event_id(f"wf-{session}", step, "llm"),
        "kind": "llm_call",
        "occurred_at": f"2026-03-01T12:00:{step:02d}.123456+00:00",
        "session_id": session,
        "workflow_id": f"wf-{session}",
        "step": step,
        "step_name": "llm",
        "agent_type": "pr-reviewer",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1000 + step,
        "output_tokens": 10 * step,
        "tags": {"env": "ci"},
    }
    if team is not None:
        body["team"] = team
    body.update(fields)
    return body


@pytest.fixture
def api(settings_factory, warehouse_factory):
    """(client, settings, keys) with one key per role; the app's producer is real."""

    def make(**overrides):
        settings = settings_factory(**overrides)
        wh = warehouse_factory(settings)
        migrate(wh, settings.database)
        store = KeyStore(wh, settings.database)
        keys = {
            "ingest": store.create(["ingest"])[1],
            "payments": store.create(["ingest"], team="payments")[1],
            "reader": store.create(["reports:read"])[1],
        }
        return TestClient(create_app(settings, wh, with_sink=False)), settings, keys

    return make


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def on_topic(settings) -> list:
    return read_topic(settings.kafka_bootstrap, topic_name(settings.topic_prefix, COST_EVENTS))


def test_a_valid_batch_lands_on_cost_events_exactly_as_posted(api):
    client, settings, keys = api()
    posted = [event(i, session="sess-a" if i % 2 else "sess-b") for i in range(6)]
    # money as a JSON string and as a JSON number: both exact Decimals, never through float
    posted[0]["reported_cost"] = "0.000000000001"
    posted[1]["reported_cost"] = Decimal("0.1")
    body = json.dumps(posted, default=str).replace('"0.1"', "0.1").encode()
    assert b'"reported_cost": 0.1' in body
    with client:
        r = client.post(
            "/v1/events", content=body, headers={**auth(keys["ingest"]), "Content-Type": "application/json"}
        )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "accepted": [{"index": i, "event_id": e["event_id"]} for i, e in enumerate(posted)],
        "rejected": [],
    }

    messages = on_topic(settings)
    assert len(messages) == 6
    by_id = {CostEvent.model_validate_json(m.value()).event_id: m for m in messages}
    assert set(by_id) == {e["event_id"] for e in posted}
    for raw in posted:
        msg = by_id[raw["event_id"]]
        expected = CostEvent.model_validate(raw)
        assert msg.key() == raw["session_id"].encode()
        assert msg.value() == codec.encode(expected)  # the hook's encoding, byte for byte
        assert CostEvent.model_validate_json(msg.value()) == expected
        assert msg.partition() == kafka_partition(msg.key(), settings.partitions)
    assert CostEvent.model_validate_json(by_id[posted[1]["event_id"]].value()).reported_cost == Decimal("0.1")
    assert CostEvent.model_validate_json(by_id[posted[0]["event_id"]].value()).reported_cost == Decimal("1E-12")
    # per session, in the order posted
    for session in ("sess-a", "sess-b"):
        steps = [CostEvent.model_validate_json(m.value()).step for m in messages if m.key() == session.encode()]
        assert steps == sorted(steps)


def test_a_mixed_batch_names_each_bad_field_and_produces_the_good_ones(api):
    client, settings, keys = api()
    good = [event(0), event(4, session="sess-b")]
    bad_tokens = event(1, input_tokens=-1)
    no_session = event(2, prompt="secret prompt text")
    del no_session["session_id"]
    kind_rule = event(5, kind="tool_call")  # a tool call without tool_name
    batch = {"events": [good[0], bad_tokens, no_session, "not an event", good[1], kind_rule]}
    with client:
        r = client.post("/v1/events", json=batch, headers={"X-API-Key": keys["ingest"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == [
        {"index": 0, "event_id": good[0]["event_id"]},
        {"index": 4, "event_id": good[1]["event_id"]},
    ]
    got = [(x["index"], x["event_id"], [(e["code"], e["field"]) for e in x["errors"]]) for x in body["rejected"]]
    assert got == [
        (1, bad_tokens["event_id"], [("greater_than_equal", "input_tokens")]),
        (2, no_session["event_id"], [("missing", "session_id"), ("extra_forbidden", "prompt")]),
        (3, None, [("not_an_object", None)]),
        (5, kind_rule["event_id"], [("value_error", None)]),
    ]
    assert "tool_name is required" in body["rejected"][3]["errors"][0]["message"]
    assert "secret prompt text" not in r.text
    assert sorted(CostEvent.model_validate_json(m.value()).event_id for m in on_topic(settings)) == sorted(
        e["event_id"] for e in good
    )


def test_a_batch_with_no_valid_event_is_422_and_produces_nothing(api):
    client, settings, keys = api()
    with client:
        r = client.post(
            "/v1/events", json=[event(0, model=None), event(1, output_tokens=-5)], headers=auth(keys["ingest"])
        )
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "batch_rejected"
    assert [(x["index"], [e["field"] for e in x["errors"]]) for x in error["rejected"]] == [
        (0, [None]),
        (1, ["output_tokens"]),
    ]
    assert on_topic(settings) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"[{", None),
        (b"", None),
        (b"\xff\xfe", None),
        (b"[" * 100_000 + b"]" * 100_000, None),
        (b'{"event": []}', "events"),
        (b'{"events": [], "extra": 1}', "events"),
        (b'"hello"', "events"),
        (b"[]", "events"),
        (b'{"events": []}', "events"),
    ],
)
def test_malformed_bodies_are_400_never_5xx(api, body, field):
    client, _settings, keys = api(ingest_max_bytes=1024 * 1024)
    with client:
        r = client.post("/v1/events", content=body, headers=auth(keys["ingest"]))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "malformed_body"
    assert r.json()["error"]["field"] == field


def test_oversize_bodies_and_batches_are_413(api):
    client, settings, keys = api(ingest_max_bytes=4096, ingest_max_events=3)
    small = [event(i) for i in range(4)]
    big = json.dumps([event(i, reason="x" * 200) for i in range(12)]).encode()
    assert len(big) > 4096
    with client:
        r = client.post("/v1/events", json=small, headers=auth(keys["ingest"]))
        assert r.status_code == 413
        assert r.json()["error"] == {
            "code": "payload_too_large",
            "field": "events",
            "message": "the batch has 4 events, over the limit of 3",
        }
        r = client.post("/v1/events", content=big, headers=auth(keys["ingest"]))
        assert r.status_code == 413
        assert r.json()["error"]["message"] == f"the body is {len(big)} bytes, over the 4096-byte limit"
        # no Content-Length (chunked): the stream is cut at the limit
        r = client.post("/v1/events", content=iter([big[:3000], big[3000:]]), headers=auth(keys["ingest"]))
        assert r.status_code == 413
        assert r.json()["error"]["message"] == "the body is over the 4096-byte limit"
        assert client.post("/v1/events", json=small[:3], headers=auth(keys["ingest"])).status_code == 200
    assert len(on_topic(settings)) == 3


def test_posting_the_same_batch_twice_produces_the_same_event_ids(api):
    client, settings, keys = api()
    batch = [event(i) for i in range(3)]
    with client:
        first = client.post("/v1/events", json=batch, headers=auth(keys["ingest"]))
        second = client.post("/v1/events", json=batch, headers=auth(keys["ingest"]))
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    ids = [CostEvent.model_validate_json(m.value()).event_id for m in on_topic(settings)]
    # both copies are in the log; the worker's dedupe by event_id counts each once
    assert sorted(ids) == sorted([e["event_id"] for e in batch] * 2)


def test_keys_scopes_and_team_restriction(api):
    client, settings, keys = api()
    mine, theirs, nobody = event(0), event(1, team="search"), event(2, team=None)
    with client:
        assert client.post("/v1/events", json=[mine]).status_code == 401
        assert client.post("/v1/events", json=[mine], headers=auth(keys["ingest"] + "0")).status_code == 401
        r = client.post("/v1/events", json=[mine], headers=auth(keys["reader"]))
        assert r.status_code == 403 and r.json()["error"]["field"] == "scope"

        r = client.post("/v1/events", json=[mine, theirs, nobody], headers=auth(keys["payments"]))
        assert r.status_code == 200
        assert r.json()["accepted"] == [{"index": 0, "event_id": mine["event_id"]}]
        assert [(x["index"], x["errors"][0]["code"], x["errors"][0]["field"]) for x in r.json()["rejected"]] == [
            (1, "team_forbidden", "team"),
            (2, "team_forbidden", "team"),
        ]
        r = client.post("/v1/events", json=[theirs], headers=auth(keys["payments"]))
        assert r.status_code == 403 and r.json()["error"]["code"] == "batch_rejected"
    assert [CostEvent.model_validate_json(m.value()).event_id for m in on_topic(settings)] == [mine["event_id"]]


def test_kafka_unreachable_is_503_with_retry_after(settings_factory, warehouse_factory):
    settings = settings_factory().model_copy(
        update={"kafka_bootstrap": "127.0.0.1:9", "ingest_delivery_timeout_s": 1.0}
    )
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    _, key = KeyStore(wh, settings.database).create(["ingest"])
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        r = client.post("/v1/events", json=[event(0)], headers=auth(key))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == "kafka_unavailable"
