"""Fixtures for the provider integrations: mock provider endpoints in the real JSON and SSE
shapes (served through httpx2.MockTransport to the real SDK clients), and readers of what
the hook recorded."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx2

from ingest import runtime
from schemas.budgets import Action, Scope, Signal
from tests.ingest.conftest import spooled_events

CANARY = "CANARY-7f3a-do-not-leak"
"""Put in every prompt; must never appear in a recorded event."""

Responder = Callable[[str, dict[str, Any]], httpx2.Response]


@dataclass
class MockProvider:
    """A provider endpoint: answers each request with `respond(path, body)`, remembers them."""

    respond: Responder
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.url.path, body))
        return self.respond(request.url.path, body)

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self.handle))

    def async_client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle))


def sse(events: Iterable[tuple[str | None, Any]]) -> httpx2.Response:
    """A text/event-stream response: `(event name or None, data)`; data may be a raw string."""
    lines = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        lines.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content="".join(lines).encode())


def recorded(timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every event the (offline) hook has written to its spool, in order."""
    return spooled_events(timeout)


def usage_of(event: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(input, output, cache read, cache write, reasoning) of a recorded event."""
    return (
        event.get("input_tokens", 0),
        event.get("output_tokens", 0),
        event.get("cache_read_tokens", 0),
        event.get("cache_write_tokens", 0),
        event.get("reasoning_tokens", 0),
    )


def kill(session_id: str) -> None:
    """Apply a kill signal to the running hook, as the listener would."""
    rt = runtime.current()
    assert rt is not None
    rt.guards.apply_signal(
        Signal(
            signal_id=f"kill-{session_id}",
            session_id=session_id,
            action=Action.KILL,
            policy_id="p-kill",
            scope=(Scope.SESSION,),
            scope_value=session_id,
            limit_tokens=1000,
            spent_tokens=1500,
            spent_cost=Decimal("0.5"),
            reason="kill: over budget",
            issued_at=datetime.now(UTC),
        )
    )
