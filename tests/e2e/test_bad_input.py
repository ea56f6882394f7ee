"""Bad input, end to end: through the SDK hook, through POST /v1/events and (for what no
validating client would send) straight onto `cost-events`, into ClickHouse.

Each input gets its documented outcome: the hook counts and drops an invalid call in
production mode; the HTTP ingest rejects it by index with the field at fault; the worker
dead-letters what reaches Kafka unvalidated, clamps future timestamps, flags late ones and
prices unknown models at the fallback rate (flagged `unpriced`, never $0). All of it goes to
one session, hence one partition, and a valid call recorded after it is still charged: no
bad input stalls a partition. A prompt-text canary put where the schema has no room for it
reaches neither `priced-events` nor ClickHouse.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

import ingest
from agentledger.settings import Settings
from api.app import create_app
from api.migrations import migrate
from schemas.events import MAX_EVENT_BYTES, DeadLetter, derive_event_id
from schemas.topics import COST_EVENTS, COST_EVENTS_DLQ, PRICED_EVENTS
from tests.api.conftest import warehouse_factory
from tests.ingest.conftest import read_topic
from tests.processors.conftest import produce

pytestmark = pytest.mark.integration

__all__ = ["warehouse_factory"]

SESSION = "bad-input-1"
CANARY = "CANARY-7f3a You are a helpful assistant. Summarise the contract of ACME Corp"
"""Prompt-like text. The schema has a place for short free text only in tag values."""
ALLOWED_CANARY = "CANARY-TAG-91c2"
"""A tag value (at most 128 characters) is attribution the schema allows; it is stored."""
RATE_CARD = 'version: "bad-1"\nmodels:\n  - model: house-model\n    input_mtok: "2"\n    output_mtok: "8"\n'


def _cost(input_tokens: int, output_tokens: int, input_mtok: str, output_mtok: str) -> Decimal:
    return (Decimal(input_tokens) * Decimal(input_mtok) + Decimal(output_tokens) * Decimal(output_mtok)) / Decimal(
        1_000_000
    )


def _event(step: int, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": derive_event_id("wf-bad-http", step, "llm"),
        "kind": "llm_call",
        "occurred_at": datetime.now(UTC).isoformat(),
        "session_id": SESSION,
        "workflow_id": "wf-bad-http",
        "step": step,
        "step_name": "llm",
        "agent_type": "intake",
        "team": "bad-input",
        "provider": "house",
        "model": "house-model",
        "input_tokens": 1000,
        "output_tokens": 100,
    }
    event.update(fields)
    return event


def _wait_for_rows(wh: Any, settings: Settings, count: int, timeout: float = 120.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = wh.query(
            "SELECT event_id, step, occurred_at, received_at, cost, unpriced, late, clamped, price_source, tags "
            "FROM {db:Identifier}.priced_events WHERE session_id = {s:String} ORDER BY event_id",
            {"db": settings.database, "s": SESSION},
        )
        if len(rows) >= count:
            time.sleep(2.0)  # anything extra would show up now
            return wh.query(
                "SELECT event_id, step, occurred_at, received_at, cost, unpriced, late, clamped, price_source, "
                "tags FROM {db:Identifier}.priced_events WHERE session_id = {s:String} ORDER BY event_id",
                {"db": settings.database, "s": SESSION},
            )
        time.sleep(0.3)
    raise AssertionError(f"{len(rows)} of {count} events reached ClickHouse")


def test_bad_input_gets_its_documented_outcome_and_stalls_no_partition(
    settings_factory: Callable[..., Settings],
    warehouse_factory: Callable[[Settings], Any],
    worker_factory: Callable[[Settings], Any],
    hook: Any,
    tmp_path: Any,
) -> None:
    rate_card = tmp_path / "rates.yaml"
    rate_card.write_text(RATE_CARD)
    settings = settings_factory(
        auth="disabled", rate_card=rate_card, max_future_skew_s=300, late_grace_s=3600, sink_batch_seconds=0.3
    )
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    worker_factory(settings)
    hook(settings=settings)  # production mode: invalid calls are counted, never raised
    expected: dict[str, Decimal] = {}

    # 1. through the hook
    s = ingest.session(session_id=SESSION, agent_type="intake", team="bad-input", workflow_id="wf-bad-hook")
    s.record_llm_call("house", "house-model", -5, 10, step=0)  # negative tokens
    s.record_llm_call("house", "house-model", "lots", 10, step=1)  # type: ignore[arg-type]  # wrong type
    s.record_llm_call("house", "house-model", 10**12, 10, step=2)  # absurd token count
    leaky = ingest.session(
        session_id=SESSION, agent_type="intake", team="bad-input", workflow_id="wf-bad-leak", tags={"p": CANARY * 3}
    )
    leaky.record_llm_call("house", "house-model", 10, 10, step=0)  # a tag value over 128 characters
    unknown = s.record_llm_call("mystery", "mystery-model-9", 2000, 300, step=3)
    expected[unknown] = _cost(2000, 300, "10", "30")  # the fallback rate: never a silent zero
    tagged = ingest.session(
        session_id=SESSION,
        agent_type="intake",
        team="bad-input",
        workflow_id="wf-bad-tag",
        tags={"note": ALLOWED_CANARY},
    )
    allowed = tagged.record_llm_call("house", "house-model", 100, 10, step=0)
    expected[allowed] = _cost(100, 10, "2", "8")
    assert ingest.flush(timeout=30)
    assert ingest.stats().invalid == 4
    assert ingest.stats().delivered == 2

    # 2. straight onto cost-events, as a producer that skips validation would
    huge = _event(90, tags={"note": "x" * 100})
    huge["padding"] = "y" * MAX_EVENT_BYTES
    raw: list[tuple[bytes, str]] = [
        (orjson.dumps(_event(91))[:-7], "invalid_json"),
        (orjson.dumps(_event(92, input_tokens="lots")), "schema"),
        (orjson.dumps(_event(93, output_tokens=-3)), "schema"),
        (orjson.dumps(_event(94, input_tokens=10**15)), "schema"),
        (orjson.dumps(_event(95, schema_version=2)), "schema"),
        (orjson.dumps(_event(96, prompt=CANARY)), "schema"),
        (orjson.dumps(huge), "oversize"),
        (b"", "empty"),
    ]
    produce(settings, COST_EVENTS.suffix, [(SESSION, payload) for payload, _ in raw])

    # 3. through POST /v1/events
    now = datetime.now(UTC)
    future = _event(10, occurred_at=(now + timedelta(days=2)).isoformat())
    late = _event(11, occurred_at=(now - timedelta(days=3)).isoformat())
    mystery = _event(12, provider="mystery", model="mystery-model-9", input_tokens=500, output_tokens=50)
    batch = [
        _event(20, input_tokens="lots"),
        _event(21, output_tokens=-1),
        _event(22, input_tokens=10**9),
        _event(23, schema_version=2),
        _event(24, prompt=CANARY),
        _event(25, tags={"p": CANARY * 3}),
        {**_event(26), "padding": "y" * MAX_EVENT_BYTES},
        future,
        late,
        mystery,
    ]
    with TestClient(create_app(settings, wh, with_sink=True)) as client:
        r = client.post("/v1/events", content=b'[{"event_id": ', headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_body")
        r = client.post("/v1/events", json=batch)
        assert r.status_code == 200, r.text
        body = r.json()
        assert CANARY not in r.text
        assert [a["index"] for a in body["accepted"]] == [7, 8, 9]
        assert [(x["index"], [(e["code"], e["field"]) for e in x["errors"]]) for x in body["rejected"]] == [
            (0, [("int_type", "input_tokens")]),
            (1, [("greater_than_equal", "output_tokens")]),
            (2, [("less_than_equal", "input_tokens")]),
            (3, [("literal_error", "schema_version")]),
            (4, [("extra_forbidden", "prompt")]),
            (5, [("string_too_long", "tags.p")]),
            (6, [("extra_forbidden", "padding")]),
        ]
        for e in (future, late):
            expected[e["event_id"]] = _cost(1000, 100, "2", "8")
        expected[mystery["event_id"]] = _cost(500, 50, "10", "30")

        # 4. after all of it, a valid call in the same session (one partition) is still charged
        last = s.record_llm_call("house", "house-model", 4000, 400, step=4)
        expected[last] = _cost(4000, 400, "2", "8")
        assert ingest.flush(timeout=30)
        rows = _wait_for_rows(wh, settings, len(expected))

        by_id = {row["event_id"]: row for row in rows}
        assert set(by_id) == set(expected)
        assert {k: by_id[k]["cost"] for k in expected} == expected
        flags = {k: (row["unpriced"], row["late"], row["clamped"]) for k, row in by_id.items()}
        assert flags[unknown] == flags[mystery["event_id"]] == (1, 0, 0)
        assert flags[late["event_id"]] == (0, 1, 0)
        assert flags[future["event_id"]] == (0, 0, 1)
        assert flags[last] == flags[allowed] == (0, 0, 0)
        clamped = by_id[future["event_id"]]
        assert clamped["occurred_at"] < now + timedelta(minutes=5)  # clamped to when it was received
        assert by_id[late["event_id"]]["occurred_at"] == datetime.fromisoformat(late["occurred_at"])  # kept
        report = client.get("/v1/chargeback", params={"group_by": "team", "team": "bad-input"}).json()
        assert Decimal(report["total"]["cost"]) == sum(expected.values())

    # the dead-letter topic holds the raw inputs, each with its reason, and nothing else
    letters = [
        DeadLetter.model_validate_json(m.value())
        for m in read_topic(settings.kafka_bootstrap, settings.topic(COST_EVENTS_DLQ.suffix))
    ]
    assert [letter.error_code for letter in sorted(letters, key=lambda x: x.offset)] == [code for _, code in raw]
    assert all(letter.reason and letter.topic == settings.topic(COST_EVENTS.suffix) for letter in letters)

    # the canary: nowhere in priced-events or ClickHouse; the allowed tag value only in `tags`
    priced = [m.value() for m in read_topic(settings.kafka_bootstrap, settings.topic(PRICED_EVENTS.suffix))]
    assert len(priced) == len(expected)
    assert not any(CANARY.encode() in value for value in priced)
    dump = orjson.dumps(wh.query("SELECT * FROM {db:Identifier}.priced_events", {"db": settings.database}), default=str)
    ledger = orjson.dumps(
        wh.query("SELECT * FROM {db:Identifier}.event_ledger", {"db": settings.database}), default=str
    )
    assert CANARY.encode() not in dump and CANARY.encode() not in ledger
    assert dump.count(ALLOWED_CANARY.encode()) == 1
    assert by_id[allowed]["tags"] == {"note": ALLOWED_CANARY}
