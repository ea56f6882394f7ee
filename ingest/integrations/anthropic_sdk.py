"""Anthropic Python SDK: messages, sync and async, streamed or not.

    client = ingest.integrations.instrument_anthropic(Anthropic())

Every `client.messages.create/parse/stream` (and `create(stream=True)`) is then reserved,
guarded and settled under the current session (or the one given).
"""

from __future__ import annotations

from typing import Any, TypeVar

from ingest.integrations.reservation import Request, Tracker, instrument_resource, session_source
from ingest.integrations.usage import anthropic_usage, count, estimate_input_tokens, field
from ingest.session import Session, Usage

ClientT = TypeVar("ClientT")

MESSAGES = "/v1/messages"


class AnthropicAdapter:
    """Reads Anthropic requests and responses; see `reservation.Adapter`."""

    provider = "anthropic"

    def __init__(self, default_max_output_tokens: int) -> None:
        self.default_max_output_tokens = default_max_output_tokens

    def request(self, path: str, body: dict[str, Any], stream: bool) -> Request | None:
        if path != MESSAGES:
            return None
        model = body.get("model")
        return Request(
            provider=self.provider,
            model=model if isinstance(model, str) and model else "unknown",
            max_output_tokens=count(body, "max_tokens") or self.default_max_output_tokens,
            estimated_input_tokens=estimate_input_tokens(body.get("messages"), body.get("system")),
            streamed=stream,
        )

    def prepare(self, tracker: Tracker, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def response(self, tracker: Tracker, path: str, result: Any) -> None:
        usage = field(result, "usage")
        tracker.observe(anthropic_usage(usage) if usage is not None else None, field(result, "model"))

    def item(self, tracker: Tracker, path: str, item: Any) -> bool:
        kind = field(item, "type")
        if kind == "message_start":
            message = field(item, "message")
            usage = field(message, "usage")
            if usage is not None:
                tracker.observe(anthropic_usage(usage), field(message, "model"))
        elif kind == "message_delta":
            usage = field(item, "usage")
            if usage is not None:
                tracker.observe(_merge_delta(tracker.usage or Usage(), usage))
        return True


def _merge_delta(seen: Usage, delta: Any) -> Usage:
    """message_delta's counts are cumulative; fields it leaves out keep message_start's."""

    def pick(name: str, current: int) -> int:
        return count(delta, name) if field(delta, name) is not None else current

    return Usage(
        input_tokens=pick("input_tokens", seen.input_tokens),
        output_tokens=pick("output_tokens", seen.output_tokens),
        cache_read_tokens=pick("cache_read_input_tokens", seen.cache_read_tokens),
        cache_write_tokens=pick("cache_creation_input_tokens", seen.cache_write_tokens),
    )


def instrument_anthropic(
    client: ClientT, session: Session | None = None, *, default_max_output_tokens: int = 4096
) -> ClientT:
    """Account every Messages API call made with `client`; returns it.

    Works with `Anthropic` and `AsyncAnthropic`: `messages.create` (streamed or not),
    `messages.stream` and `messages.parse`. Calls are recorded under `session`, or, if
    None, under whichever session is current when the call is made; outside any session
    they pass untouched. Before each request the guard runs and `call_started` reserves
    `max_tokens` of output: a stopped session raises `BudgetExceeded` before anything is
    sent. Cache reads and cache writes are carried over; a stream closed early records the
    tokens its events had reported. Recording never raises into the call otherwise.
    """
    adapter = AnthropicAdapter(default_max_output_tokens)
    instrument_resource(client.messages, adapter, session_source(session))  # type: ignore[attr-defined]
    return client
