"""Property tests of the event contract: every event the model accepts survives the wire
format unchanged, and no mutation that breaks a documented limit gets through."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.codec import decode, encode
from schemas.events import MAX_MONEY, MAX_TAGS, MAX_TOKENS, CostEvent, PricedEvent

pytestmark = pytest.mark.unit

names = st.from_regex(r"[\x21-\x7e][\x20-\x7e]{0,127}", fullmatch=True)
tag_keys = st.from_regex(r"[A-Za-z0-9_.:/-]{1,64}", fullmatch=True)
tag_values = st.text(max_size=128)
tokens = st.integers(0, MAX_TOKENS)
money = st.decimals(min_value=0, max_value=MAX_MONEY, places=12, allow_nan=False, allow_infinity=False)
zones = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=45)), timezone(timedelta(hours=-9, minutes=-30))])
instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=zones)
event_ids = st.from_regex(r"[0-9a-f]{32}", fullmatch=True)


@st.composite
def raw_events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["llm_call", "tool_call", "call_started"]))
    event: dict[str, Any] = {
        "event_id": draw(event_ids),
        "kind": kind,
        "occurred_at": draw(instants),
        "session_id": draw(names),
        "workflow_id": draw(names),
        "step": draw(st.integers(0, 10_000_000)),
        "step_name": draw(names),
        "agent_type": draw(names),
        "team": draw(st.none() | names),
        "project": draw(st.none() | names),
        "customer": draw(st.none() | names),
        "tags": draw(st.dictionaries(tag_keys, tag_values, max_size=MAX_TAGS)),
        "input_tokens": draw(tokens),
        "output_tokens": draw(tokens),
        "cache_read_tokens": draw(tokens),
        "reasoning_tokens": draw(tokens),
        "reported_cost": draw(st.none() | money),
    }
    if kind == "tool_call":
        event.update(tool_name=draw(names), tool_fee=draw(st.none() | money), duration_ms=draw(st.integers(0, 10**8)))
    else:
        event.update(provider=draw(names), model=draw(names))
    if kind == "call_started":
        event.update(max_output_tokens=draw(st.none() | tokens), estimated_cost=draw(st.none() | money))
    return event


@given(raw_events())
def test_every_valid_event_round_trips_the_wire_format(raw: dict[str, Any]) -> None:
    event = CostEvent.model_validate(raw)
    wire = encode(event)
    assert decode(CostEvent, wire) == event
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at == raw["occurred_at"]  # the same instant, normalised to UTC
    # money travels as text: a float would have lost digits
    doc = orjson.loads(wire)
    for name in ("reported_cost", "tool_fee", "estimated_cost"):
        if raw.get(name) is not None:
            assert isinstance(doc[name], str) and Decimal(doc[name]) == raw[name]


@given(raw_events(), money, money)
def test_a_priced_event_keeps_every_decimal(raw: dict[str, Any], cost: Decimal, list_cost: Decimal) -> None:
    priced = PricedEvent(
        event=CostEvent.model_validate(raw),
        cost=cost,
        list_cost=list_cost,
        price_source="rate-card",
        price_version="v",
        priced_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    back = decode(PricedEvent, encode(priced))
    assert (back.cost, back.list_cost) == (cost, list_cost)
    assert back == priced


def _orjson_encoding(model: Any) -> bytes:
    """The wire format as orjson wrote it before pydantic-core's serializer took over, but for a
    UTC datetime's `Z` (orjson wrote `+00:00`; every reader takes both, see tests/api/test_sink_fast.py):
    readers (the sink's fast path, DLQ tools) must see the same bytes otherwise."""

    def default(value: Any) -> Any:
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, (set, frozenset, tuple)):
            return list(value)
        raise TypeError(type(value).__name__)

    return orjson.dumps(model.model_dump(mode="python", exclude_none=True), default=default, option=orjson.OPT_UTC_Z)


@given(raw_events(), money, money, instants)
def test_the_wire_bytes_are_what_orjson_wrote(
    raw: dict[str, Any], cost: Decimal, list_cost: Decimal, at: datetime
) -> None:
    event = CostEvent.model_validate(raw)
    priced = PricedEvent(event=event, cost=cost, list_cost=list_cost, price_source="s", price_version="v", priced_at=at)
    assert encode(event) == _orjson_encoding(event)
    assert encode(priced) == _orjson_encoding(priced)


BREAKS = st.sampled_from(
    [
        ("input_tokens", -1),
        ("output_tokens", MAX_TOKENS + 1),
        ("cache_read_tokens", "12"),
        ("step", -1),
        ("schema_version", 2),
        ("session_id", ""),
        ("session_id", " leading blank"),
        ("team", "x" * 129),
        ("event_id", "A" * 32),
        ("occurred_at", "2026-01-01T00:00:00"),  # no time zone
        ("reported_cost", "-0.01"),
        ("reported_cost", "1e400"),
        ("reported_cost", "0.0000000000001"),  # 13 decimal places
        ("prompt", "You are a helpful assistant"),
        ("completion", "Sure! Here is"),
        ("tags", {f"k{i}": "v" for i in range(MAX_TAGS + 1)}),
        ("tags", {"bad key!": "v"}),
        ("tags", {"k": "v" * 129}),
        ("kind", "llm_response"),
    ]
)


@given(raw_events(), BREAKS)
def test_a_mutation_that_breaks_a_limit_is_refused(raw: dict[str, Any], breaks: tuple[str, Any]) -> None:
    field, value = breaks
    raw = {**raw, field: value}
    with pytest.raises(ValidationError):
        CostEvent.model_validate(raw)
    # and the same on the JSON path the worker and the HTTP ingest take
    wire = orjson.dumps(raw, default=str)
    with pytest.raises(ValidationError):
        CostEvent.model_validate_json(wire)
