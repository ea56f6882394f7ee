"""The event contract: limits, kind rules, idempotency key, JSON Schema export."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import CostEvent, EventKind, PricedEvent, derive_event_id
from schemas.codec import decode, encode
from schemas.jsonschema import EXPORTED, JSON_DIR, render

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def llm(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": derive_event_id("wf-1", 0, "llm"),
        "kind": "llm_call",
        "occurred_at": NOW.isoformat(),
        "session_id": "sess-1",
        "workflow_id": "wf-1",
        "step": 0,
        "step_name": "llm",
        "agent_type": "pr-reviewer",
        "team": "payments",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1200,
        "output_tokens": 300,
    }
    base.update(overrides)
    return base


def test_event_id_is_the_documented_derivation() -> None:
    expected = hashlib.sha256(b"wf-9:3:search").hexdigest()[:32]
    assert derive_event_id("wf-9", 3, "search") == expected
    assert derive_event_id("wf-9", 3, "search") == derive_event_id("wf-9", 3, "search")
    assert derive_event_id("wf-9", 4, "search") != expected


@given(st.text(min_size=1, max_size=40), st.integers(0, 10**6), st.text(min_size=1, max_size=40))
def test_event_id_shape(workflow: str, step: int, name: str) -> None:
    event_id = derive_event_id(workflow, step, name)
    assert len(event_id) == 32
    assert int(event_id, 16) >= 0


def test_valid_event_round_trips_through_the_wire_format() -> None:
    event = CostEvent.model_validate(llm(cache_read_tokens=100, reasoning_tokens=50, tags={"env": "prod"}))
    assert decode(CostEvent, encode(event)) == event
    assert event.total_tokens == 1600


def test_occurred_at_is_normalised_to_utc_and_naive_times_are_refused() -> None:
    local = datetime(2026, 11, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    event = CostEvent.model_validate(llm(occurred_at=local.isoformat()))
    assert event.occurred_at == NOW and event.occurred_at.tzinfo == UTC
    with pytest.raises(ValidationError, match="occurred_at"):
        CostEvent.model_validate(llm(occurred_at="2026-11-01T12:00:00"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_tokens", -1),
        ("output_tokens", 100_000_001),
        ("input_tokens", "many"),
        ("session_id", ""),
        ("session_id", "x" * 129),
        ("team", "line\nbreak"),
        ("event_id", "not-hex"),
        ("schema_version", 2),
        ("kind", "llm_cal"),
        ("tags", {f"k{i}": "v" for i in range(17)}),
        ("reported_cost", "-0.01"),
        ("prompt", "the prompt text has no field"),
    ],
)
def test_limits_refuse_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        CostEvent.model_validate(llm(**{field: value}))
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": None}, "model is required"),
        ({"kind": "tool_call"}, "tool_name is required"),
        ({"kind": "call_aborted"}, "settles"),
        ({"kind": "adjustment"}, "adjustment_amount and reason"),
        ({"adjustment_amount": "1.5"}, "only allowed for kind=adjustment"),
        ({"adjustment_list_amount": "0"}, "only allowed for kind=adjustment"),
    ],
)
def test_kind_specific_rules(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CostEvent.model_validate(llm(**overrides))


def test_events_are_frozen() -> None:
    event = CostEvent.model_validate(llm())
    with pytest.raises(ValidationError):
        event.input_tokens = 5  # type: ignore[misc]


def test_money_is_decimal_on_the_wire() -> None:
    priced = PricedEvent(
        event=CostEvent.model_validate(llm()),
        cost=Decimal("0.006000000001"),
        list_cost=Decimal("0.0075"),
        price_source="genai-prices",
        price_version="test",
        priced_at=NOW,
    )
    wire = encode(priced)
    assert b'"cost":"0.006000000001"' in wire
    assert decode(PricedEvent, wire).cost == Decimal("0.006000000001")


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_exported_json_schema_is_current(name: str) -> None:
    path = JSON_DIR / f"{name}.schema.json"
    assert path.read_text() == render(EXPORTED[name]), f"run: python -m schemas.jsonschema ({path} is stale)"


def test_kinds_are_the_documented_set() -> None:
    assert {k.value for k in EventKind} == {"llm_call", "tool_call", "call_started", "call_aborted", "adjustment"}
