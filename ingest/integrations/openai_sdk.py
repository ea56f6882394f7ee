"""OpenAI Python SDK: chat completions and the Responses API, sync and async, streamed or not.

    client = ingest.integrations.instrument_openai(OpenAI())

Every `client.chat.completions.create/parse/stream` and `client.responses.create/parse/stream`
is then reserved, guarded and settled under the current session (or the one given).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from ingest.integrations.reservation import Request, Tracker, count_error, instrument_resource, session_source
from ingest.integrations.usage import (
    count,
    estimate_input_tokens,
    field,
    openai_chat_usage,
    openai_responses_usage,
)
from ingest.session import Session

ClientT = TypeVar("ClientT")

CHAT = "/chat/completions"
RESPONSES = "/responses"
_DONE_STATUSES = ("response.completed", "response.incomplete", "response.failed")


class OpenAIAdapter:
    """Reads OpenAI requests and responses; see `reservation.Adapter`."""

    provider = "openai"

    def __init__(self, default_max_output_tokens: int) -> None:
        self.default_max_output_tokens = default_max_output_tokens

    def request(self, path: str, body: dict[str, Any], stream: bool) -> Request | None:
        if path not in (CHAT, RESPONSES):
            return None
        model = body.get("model")
        text: tuple[Any, ...]
        if path == CHAT:
            limit = _int(body.get("max_completion_tokens")) or _int(body.get("max_tokens"))
            text = (body.get("messages"),)
        else:
            limit = _int(body.get("max_output_tokens"))
            text = (body.get("input"), body.get("instructions"))
        return Request(
            provider=self.provider,
            model=model if isinstance(model, str) and model else "unknown",
            max_output_tokens=limit or self.default_max_output_tokens,
            estimated_input_tokens=estimate_input_tokens(*text),
            streamed=stream,
        )

    def prepare(self, tracker: Tracker, body: dict[str, Any]) -> dict[str, Any]:
        """A streamed chat completion reports usage only when asked: ask, and hide the answer."""
        if not tracker.request.streamed or "messages" not in body:
            return body
        options = body.get("stream_options")
        if isinstance(options, Mapping) and "include_usage" in options:
            return body
        tracker.injected = True
        return {**body, "stream_options": {**(options if isinstance(options, Mapping) else {}), "include_usage": True}}

    def response(self, tracker: Tracker, path: str, result: Any) -> None:
        usage = field(result, "usage")
        if usage is None:
            tracker.observe(None, field(result, "model"))
            return
        read = openai_chat_usage if path == CHAT else openai_responses_usage
        tracker.observe(read(usage), field(result, "model"))

    def item(self, tracker: Tracker, path: str, item: Any) -> bool:
        if path == CHAT:
            usage = field(item, "usage")
            try:
                tracker.observe(openai_chat_usage(usage) if usage is not None else None, field(item, "model"))
            except Exception:
                count_error("could not read a streamed chat completion's usage")
            # the usage chunk (no choices) that only the integration asked for stays hidden
            return not (tracker.injected and usage is not None and not field(item, "choices"))
        if field(item, "type") in _DONE_STATUSES:
            response = field(item, "response")
            usage = field(response, "usage")
            tracker.observe(openai_responses_usage(usage) if usage is not None else None, field(response, "model"))
        return True


def _int(value: Any) -> int:
    return count({"v": value}, "v")


def instrument_openai(
    client: ClientT, session: Session | None = None, *, default_max_output_tokens: int = 4096
) -> ClientT:
    """Account every chat completion and Responses API call made with `client`; returns it.

    Works with `OpenAI` and `AsyncOpenAI`, streamed or not (`create`, `parse`, `stream`).
    Calls are recorded under `session`, or, if None, under whichever session is current
    (`with ingest.session(...)`) when the call is made; outside any session they pass
    untouched. Before each request the session's guard runs and `call_started` reserves
    `max_completion_tokens` / `max_tokens` / `max_output_tokens` (else
    `default_max_output_tokens`) of output: a stopped session raises `BudgetExceeded`
    before anything is sent. A streamed chat completion is asked for its usage
    (`stream_options.include_usage`) unless the caller set it, and the extra usage chunk is
    kept from the caller. Recording never raises into the call otherwise; failures are
    logged and counted. Copies made with `client.with_options(...)` are not instrumented:
    instrument the client you call.
    """
    adapter = OpenAIAdapter(default_max_output_tokens)
    sessions = session_source(session)
    resources = [client.chat.completions, client.responses]  # type: ignore[attr-defined]
    for resource in resources:
        instrument_resource(resource, adapter, sessions)
    return client
