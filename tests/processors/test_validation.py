"""The dead-letter policy's input: every rejection has a stable code and names the field at fault."""

from __future__ import annotations

import orjson
import pytest

from processors.app import Rejection, parse_event
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
