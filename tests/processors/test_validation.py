"""The dead-letter policy's input: every rejection has a stable code and names the field at fault."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from processors.app import Rejection, parse_event, received
from schemas.codec import encode
from schemas.events import MAX_EVENT_BYTES, CostEvent
from tests.processors.conftest import make_event

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        (None, "empty", ""),
        (b"", "empty", ""),
        (b"{nope", "invalid_json", ""),
        (orjson.dumps(make_event(input_tokens="many")), "schema", "input_tokens"),
        (orjson.dumps(make_event(output_tokens=-1)), "schema", "output_tokens"),
        (orjson.dumps(make_event(prompt="secret")), "schema", "prompt"),
        (orjson.dumps(make_event(event_id="not-hex")), "schema", "event_id"),
        (orjson.dumps(make_event(occurred_at="2026-06-01T12:00:00")), "schema", "occurred_at"),
        (orjson.dumps(make_event(model=None)), "schema", "model is required"),
        (b'{"x":"' + b"y" * MAX_EVENT_BYTES + b'"}', "oversize", ""),
    ],
)
def test_rejections(raw, code, field):
    got = parse_event(raw)
    assert isinstance(got, Rejection)
    assert got.code == code
    assert field in got.reason


def test_valid_event_parses():
    got = parse_event(orjson.dumps(make_event(input_tokens=7)))
    assert isinstance(got, CostEvent)
    assert got.input_tokens == 7


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"kind": "tool_call", "model": None, "provider": None, "tool_name": "search", "duration_ms": 20},
        {"tags": {"env": "prod"}, "customer": "acme", "received_at": "2026-06-01T12:00:01Z"},
    ],
)
@pytest.mark.parametrize("clamped", [False, True])
def test_received_stamps_the_event_as_pydantics_copy_would(overrides: dict[str, object], clamped: bool) -> None:
    event = parse_event(orjson.dumps(make_event(**overrides)))
    assert isinstance(event, CostEvent)
    now = datetime(2026, 6, 1, 12, 0, 5, 123456, tzinfo=UTC)
    at = now - timedelta(seconds=1) if clamped else None
    update: dict[str, object] = {"received_at": now} | ({"occurred_at": at} if at else {})
    expected = event.model_copy(update=update)
    got = received(event, now, at)
    assert got is event  # stamped in place: the worker's own parse, held by nothing else
    assert got == expected
    assert got.__pydantic_fields_set__ == expected.__pydantic_fields_set__
    assert list(got.__dict__) == list(expected.__dict__)
    assert encode(got) == encode(expected)
