"""POST /v1/events: HTTP ingest for agents that cannot reach Kafka, same contract as the hook.

The body is a JSON array of cost events, or `{"events": [...]}`; at most
`ingest_max_events` events and `ingest_max_bytes` bytes (else 413). Each event is validated
by the hook's own model (`CostEvent`) and encoded as the hook encodes it; the valid ones are
produced to `cost-events`, keyed by session id, and the answer waits for Kafka's acks, so
a 2xx means they are durable.

Answers:
- 200: at least one event accepted; `accepted` lists them (index, event_id), `rejected`
  lists the others (index, event_id if readable, errors with code, field and message).
- 422 (`batch_rejected`): no event valid, the same per-item errors under `error.rejected`;
  403 when every rejection is the key's team restriction.
- 400: not JSON, or not an array / {"events": [...]}; 413: over a limit.
- 503 with Retry-After: Kafka did not ack in time. Some events may have landed.

Re-posting a batch (after a 503, a timeout, or by mistake) is safe: the worker counts an
event_id once, however many times it arrives.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError

from api.auth import require
from api.errors import BatchRejected, KafkaUnavailable, MalformedBody, PayloadTooLarge
from api.keys import ApiKey
from api.metrics import HTTP_INGEST_EVENTS
from api.producer import DeliveryFailed, EventProducer
from schemas import codec
from schemas.events import MAX_EVENT_BYTES, CostEvent

router = APIRouter(prefix="/v1", tags=["ingest"])


class ItemError(BaseModel):
    code: str
    field: str | None
    message: str


class Accepted(BaseModel):
    index: int
    event_id: str


class Rejected(BaseModel):
    index: int
    event_id: str | None
    errors: list[ItemError]


class IngestResult(BaseModel):
    accepted: list[Accepted]
    rejected: list[Rejected]


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes, over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body is over the {limit}-byte limit")
    return bytes(body)


def parse_batch(body: bytes, max_events: int) -> list[Any]:
    """The list of raw events of a body: an array, or an object with just `events`."""
    if not body.strip():
        raise MalformedBody("the body is empty; send a JSON array of cost events")
    try:
        # Decimal for every non-integer number: money never passes through float
        doc = json.loads(body, parse_float=Decimal)
    except (ValueError, RecursionError) as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}") from None
    if isinstance(doc, dict) and set(doc) == {"events"}:
        doc = doc["events"]
    if not isinstance(doc, list):
        raise MalformedBody('expected a JSON array of cost events, or {"events": [...]}', field="events")
    if not doc:
        raise MalformedBody("the batch is empty", field="events")
    if len(doc) > max_events:
        raise PayloadTooLarge(f"the batch has {len(doc)} events, over the limit of {max_events}", field="events")
    return doc


def _field(loc: tuple[int | str, ...]) -> str | None:
    return ".".join(str(p) for p in loc) if loc else None


def check_event(raw: Any, key: ApiKey) -> tuple[CostEvent | None, bytes, list[ItemError]]:
    """The event and its wire bytes, or the reasons it is refused."""
    if not isinstance(raw, dict):
        return None, b"", [ItemError(code="not_an_object", field=None, message="an event must be a JSON object")]
    try:
        event = CostEvent.model_validate(raw)
    except ValidationError as exc:
        # the message and field only: values could hold anything (tags)
        errors = [ItemError(code=e["type"], field=_field(e["loc"]), message=e["msg"]) for e in exc.errors()]
        return None, b"", errors
    value = codec.encode(event)
    if len(value) > MAX_EVENT_BYTES:
        msg = f"the encoded event is {len(value)} bytes, over {MAX_EVENT_BYTES}"
        return None, b"", [ItemError(code="oversize", field=None, message=msg)]
    if key.team is not None and event.team != key.team:
        msg = f"this key may only ingest events of team {key.team!r}"
        return None, b"", [ItemError(code="team_forbidden", field="team", message=msg)]
    return event, value, []


def _raw_event_id(raw: Any) -> str | None:
    value = raw.get("event_id") if isinstance(raw, dict) else None
    return value[:64] if isinstance(value, str) else None


_EVENTS = {"type": "array", "items": {"type": "object"}, "description": "Cost events (schemas/json/cost-event.v1)"}
_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    _EVENTS,
                    {"type": "object", "properties": {"events": _EVENTS}, "required": ["events"]},
                ]
            }
        }
    },
}


@router.post(
    "/events",
    response_model=IngestResult,
    summary="Ingest a batch of cost events over HTTP",
    # the body is read raw (size limits before parsing), so its shape is declared by hand
    openapi_extra={"requestBody": _BODY},
)
async def ingest_events(request: Request, key: Annotated[ApiKey, Depends(require("ingest"))]) -> IngestResult:
    settings = request.app.state.settings
    producer: EventProducer = request.app.state.producer
    raw_events = parse_batch(await read_body(request, settings.ingest_max_bytes), settings.ingest_max_events)

    accepted: list[Accepted] = []
    rejected: list[Rejected] = []
    messages: list[tuple[bytes, bytes]] = []
    for index, raw in enumerate(raw_events):
        event, value, errors = check_event(raw, key)
        if event is None:
            rejected.append(Rejected(index=index, event_id=_raw_event_id(raw), errors=errors))
        else:
            accepted.append(Accepted(index=index, event_id=event.event_id))
            messages.append((event.session_id.encode(), value))
    if rejected:
        HTTP_INGEST_EVENTS.labels("rejected").inc(len(rejected))
    if not accepted:
        only_team = all(e.code == "team_forbidden" for r in rejected for e in r.errors)
        raise BatchRejected(
            f"none of the {len(rejected)} events was accepted",
            [r.model_dump() for r in rejected],
            status=403 if only_team else 422,
        )
    try:
        await producer.send(messages)
    except DeliveryFailed as exc:
        HTTP_INGEST_EVENTS.labels("kafka_unavailable").inc(len(messages))
        raise KafkaUnavailable(
            f"Kafka did not acknowledge the batch ({exc}); retry it, event_ids make that safe"
        ) from None
    HTTP_INGEST_EVENTS.labels("accepted").inc(len(messages))
    return IngestResult(accepted=accepted, rejected=rejected)
