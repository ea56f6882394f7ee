"""/v1/signals/stream: budget signals for agents that reach the API but not Kafka (SSE)."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from api.auth import require
from api.errors import Forbidden
from api.keys import ApiKey
from api.signal_relay import relay_of

router = APIRouter(prefix="/v1/signals", tags=["signals"])
_start = threading.Lock()


@router.get(
    "/stream",
    summary="Every budget signal as it is issued (server-sent events), after a snapshot of stopped sessions",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "status, ready, signal events"}},
)
def stream(request: Request, key: Annotated[ApiKey, Depends(require("ingest"))]) -> StreamingResponse:
    """The hook's HTTP transport follows this (`ingest.configure(transport="http")`).

    Events: `status` (a SessionStatus), `ready` (the snapshot is complete), `signal` (a
    Signal); `: ping` comments keep the connection alive. Signals do not say which team a
    session belongs to, so a team-restricted key is refused rather than shown other teams'."""
    if key.team is not None:
        raise Forbidden(
            f"the key {key.key_id} is restricted to a team; the signal stream carries every team's sessions",
            field="team",
        )
    relay = relay_of(request.app.state, request.app.state.settings, _start)
    return StreamingResponse(
        relay.stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
