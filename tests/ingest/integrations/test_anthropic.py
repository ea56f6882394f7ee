"""Anthropic SDK integration: the real `Anthropic` / `AsyncAnthropic` clients against a mock transport."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import httpx2
import pytest

import ingest
from ingest.integrations import instrument_anthropic
from tests.ingest.integrations.conftest import CANARY, MockProvider, kill, recorded, sse, usage_of

pytestmark = pytest.mark.unit

MODEL = "claude-sonnet-4-20250514"
USAGE = {
    "input_tokens": 50,
    "cache_creation_input_tokens": 200,
    "cache_read_input_tokens": 1000,
    "output_tokens": 80,
    "service_tier": "standard",
}
EXPECTED = (50, 80, 1000, 200, 0)


def message() -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": USAGE,
    }


def stream_events(cut_after: int | None = None) -> list[tuple[str | None, Any]]:
    start_usage = {**USAGE, "output_tokens": 1}
    events: list[tuple[str | None, Any]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {**message(), "content": [], "stop_reason": None, "usage": start_usage},
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo!"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 80},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events if cut_after is None else events[:cut_after]


def respond(path: str, body: dict[str, Any]) -> httpx2.Response:
    if path == "/v1/messages":
        return sse(stream_events()) if body.get("stream") else httpx2.Response(200, json=message())
    return httpx2.Response(404, json={"type": "error", "error": {"type": "not_found_error", "message": "no"}})


def prompt() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Say hello. {CANARY}"}]


def sync_client(provider: MockProvider) -> anthropic.Anthropic:
    return instrument_anthropic(anthropic.Anthropic(api_key="sk-ant", http_client=provider.client(), max_retries=0))


def async_client(provider: MockProvider) -> anthropic.AsyncAnthropic:
    return instrument_anthropic(
        anthropic.AsyncAnthropic(api_key="sk-ant", http_client=provider.async_client(), max_retries=0)
    )


def settled(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "llm_call"]


def test_messages_create_records_cache_reads_and_writes(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = sync_client(provider)
    with ingest.session(session_id="an-1", agent_type="a"):
        reply = client.messages.create(model="claude-sonnet-4-0", max_tokens=1024, messages=prompt())
    assert reply.content[0].text == "Hello!"  # type: ignore[union-attr]
    started, done = recorded()
    assert (started["kind"], started["provider"], started["model"]) == (
        "call_started",
        "anthropic",
        "claude-sonnet-4-0",
    )
    assert started["max_output_tokens"] == 1024
    assert done["settles"] == started["event_id"]
    assert usage_of(done) == EXPECTED
    assert (done["model"], done["streamed"]) == (MODEL, False)
    assert CANARY not in str(recorded())


def test_create_stream_true_and_the_stream_helper(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = sync_client(provider)
    with ingest.session(session_id="an-2", agent_type="a"):
        events = list(client.messages.create(model="claude-sonnet-4-0", max_tokens=512, messages=prompt(), stream=True))
        with client.messages.stream(model="claude-sonnet-4-0", max_tokens=256, messages=prompt()) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert text == "Hello!" and final.usage.output_tokens == 80
    started, done, started2, done2 = recorded()
    assert (started["max_output_tokens"], started2["max_output_tokens"]) == (512, 256)
    assert usage_of(done) == usage_of(done2) == EXPECTED
    assert done["streamed"] and done2["streamed"]


def test_async_client_streamed_and_not(hook) -> None:
    hook()
    provider = MockProvider(respond)

    async def main() -> str:
        client = async_client(provider)
        async with ingest.session(session_id="an-3", agent_type="a"):
            await client.messages.create(model="claude-sonnet-4-0", max_tokens=64, messages=prompt())
            stream = await client.messages.create(
                model="claude-sonnet-4-0", max_tokens=64, messages=prompt(), stream=True
            )
            assert isinstance(stream, anthropic.AsyncStream)
            async for _ in stream:
                pass
            async with client.messages.stream(model="claude-sonnet-4-0", max_tokens=64, messages=prompt()) as helper:
                return "".join([t async for t in helper.text_stream])

    assert asyncio.run(main()) == "Hello!"
    done = settled(recorded())
    assert [usage_of(e) for e in done] == [EXPECTED] * 3
    assert [e["streamed"] for e in done] == [False, True, True]


def test_stream_cut_early_records_the_tokens_already_reported(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = sync_client(provider)
    with ingest.session(session_id="an-4", agent_type="a"):
        stream = client.messages.create(model="claude-sonnet-4-0", max_tokens=512, messages=prompt(), stream=True)
        for event in stream:
            if event.type == "content_block_delta":
                break
        stream.close()
    started, partial = recorded()
    assert partial["kind"] == "llm_call" and partial["settles"] == started["event_id"]
    assert partial["error"] is True
    assert usage_of(partial) == (50, 1, 1000, 200, 0)  # message_start's counts; the end never came


def dropped_stream(path: str, body: dict[str, Any]) -> httpx2.Response:
    """The first events arrive, then the connection resets."""
    head = sse(stream_events(cut_after=4)).content

    def chunks() -> Any:
        yield head
        raise httpx2.ReadError("connection reset by peer")

    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=chunks())


def test_connection_dropped_mid_stream_records_what_was_seen(hook) -> None:
    hook()
    client = sync_client(MockProvider(dropped_stream))
    seen = []
    with (
        ingest.session(session_id="an-5", agent_type="a"),
        pytest.raises((anthropic.APIConnectionError, httpx2.ReadError)),
    ):
        for event in client.messages.create(model="claude-sonnet-4-0", max_tokens=64, messages=prompt(), stream=True):
            seen.append(event.type)
    assert seen == ["message_start", "content_block_start", "content_block_delta"]
    started, partial = recorded()
    assert (partial["kind"], partial["error"], partial["settles"]) == ("llm_call", True, started["event_id"])
    assert usage_of(partial) == (50, 1, 1000, 200, 0)


def test_killed_session_raises_before_any_request(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = sync_client(provider)
    with ingest.session(session_id="an-6", agent_type="a"):
        kill("an-6")
        with pytest.raises(ingest.BudgetExceeded):
            client.messages.create(model="claude-sonnet-4-0", max_tokens=64, messages=prompt())
        with (
            pytest.raises(ingest.BudgetExceeded),
            client.messages.stream(model="claude-sonnet-4-0", max_tokens=64, messages=prompt()),
        ):
            pytest.fail("a killed session must not stream")

        async def main() -> None:
            with pytest.raises(ingest.BudgetExceeded):
                await async_client(provider).messages.create(
                    model="claude-sonnet-4-0", max_tokens=64, messages=prompt(), stream=True
                )

        asyncio.run(main())
    assert provider.requests == []
    assert recorded() == []


def test_count_tokens_is_not_a_call(hook) -> None:
    hook()
    provider = MockProvider(lambda path, body: httpx2.Response(200, json={"input_tokens": 12}))
    client = sync_client(provider)
    with ingest.session(session_id="an-7", agent_type="a"):
        assert client.messages.count_tokens(model="claude-sonnet-4-0", messages=prompt()).input_tokens == 12
    assert recorded() == []


def test_async_stream_closed_early_records_the_tokens_already_reported(hook) -> None:
    hook()
    provider = MockProvider(respond)

    async def main() -> None:
        client = async_client(provider)
        async with ingest.session(session_id="an-8", agent_type="a"):
            stream = await client.messages.create(
                model="claude-sonnet-4-0", max_tokens=64, messages=prompt(), stream=True
            )
            async for event in stream:
                if event.type == "content_block_delta":
                    break
            await stream.close()

    asyncio.run(main())
    started, partial = recorded()
    assert (partial["kind"], partial["error"], partial["settles"]) == ("llm_call", True, started["event_id"])
    assert usage_of(partial) == (50, 1, 1000, 200, 0)
