"""OpenAI SDK integration: the real `OpenAI` / `AsyncOpenAI` clients against a mock transport."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import openai
import pytest

import ingest
from ingest.integrations import instrument_openai
from ingest.integrations import usage as usage_module
from tests.ingest.integrations.conftest import CANARY, MockProvider, kill, recorded, sse, usage_of

pytestmark = pytest.mark.unit

MODEL = "gpt-4o-2024-08-06"
CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 200, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 64, "audio_tokens": 0},
}
CHAT_EXPECTED = (1000, 300, 200, 0, 64)
RESPONSES_USAGE = {
    "input_tokens": 900,
    "input_tokens_details": {"cached_tokens": 400, "cache_write_tokens": 0},
    "output_tokens": 250,
    "output_tokens_details": {"reasoning_tokens": 128},
    "total_tokens": 1150,
}
RESPONSES_EXPECTED = (500, 250, 400, 0, 128)


def chat_completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1732000000,
        "model": MODEL,
        "system_fingerprint": "fp_1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": CHAT_USAGE,
    }


def chat_chunks(include_usage: bool) -> list[tuple[str | None, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        base: dict[str, Any] = {
            "id": "chatcmpl-2",
            "object": "chat.completion.chunk",
            "created": 1732000000,
            "model": MODEL,
            "system_fingerprint": "fp_1",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            base["usage"] = None
        return base

    events: list[tuple[str | None, Any]] = [
        (None, chunk({"role": "assistant", "content": "", "refusal": None})),
        (None, chunk({"content": "Hel"})),
        (None, chunk({"content": "lo!"})),
        (None, chunk({}, "stop")),
    ]
    if include_usage:
        final = {**chunk({}), "choices": [], "usage": CHAT_USAGE}
        events.append((None, final))
    events.append((None, "[DONE]"))
    return events


def response_object(status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1732000000,
        "status": status,
        "model": "o4-mini-2025-04-16",
        "output": []
        if status == "in_progress"
        else [
            {
                "id": "msg_1",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


def responses_events() -> list[tuple[str | None, Any]]:
    item = {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    seq = iter(range(100))
    events = [
        ("response.created", {"response": response_object("in_progress", None)}),
        ("response.in_progress", {"response": response_object("in_progress", None)}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
        ("response.content_part.added", {"item_id": "msg_1", "output_index": 0, "content_index": 0, "part": part}),
        ("response.output_text.delta", {"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hello!"}),
        ("response.output_text.done", {"item_id": "msg_1", "output_index": 0, "content_index": 0, "text": "Hello!"}),
        ("response.completed", {"response": response_object("completed", RESPONSES_USAGE)}),
    ]
    return [(name, {"type": name, "sequence_number": next(seq), **data}) for name, data in events]


def respond(path: str, body: dict[str, Any]) -> httpx2.Response:
    """Like the real API: usage chunks in a chat stream only when asked for."""
    if path.endswith("/chat/completions"):
        if body.get("stream"):
            return sse(chat_chunks(bool((body.get("stream_options") or {}).get("include_usage"))))
        return httpx2.Response(200, json=chat_completion())
    if path.endswith("/responses"):
        if body.get("stream"):
            return sse(responses_events())
        return httpx2.Response(200, json=response_object("completed", RESPONSES_USAGE))
    return httpx2.Response(404, json={"error": {"message": "no such route"}})


def messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Say hello. {CANARY}"}]


def sync_client(provider: MockProvider) -> openai.OpenAI:
    return instrument_openai(openai.OpenAI(api_key="sk-test", http_client=provider.client(), max_retries=0))


def async_client(provider: MockProvider) -> openai.AsyncOpenAI:
    return instrument_openai(openai.AsyncOpenAI(api_key="sk-test", http_client=provider.async_client(), max_retries=0))


def settled(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "llm_call"]


def test_chat_completion_records_exact_usage_and_reserves_its_max_tokens(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = sync_client(provider)
    with ingest.session(session_id="oa-1", agent_type="a"):
        reply = client.chat.completions.create(model="gpt-4o", messages=messages(), max_completion_tokens=500)
    assert reply.choices[0].message.content == "Hello!"
    started, done = recorded()
    assert started["kind"] == "call_started"
    assert (started["provider"], started["model"], started["max_output_tokens"]) == ("openai", "gpt-4o", 500)
    assert started["input_tokens"] > 0  # a rough estimate from the prompt's length
    assert done["kind"] == "llm_call" and done["settles"] == started["event_id"]
    assert usage_of(done) == CHAT_EXPECTED
    assert (done["model"], done["streamed"], done.get("error", False)) == (MODEL, False, False)
    assert CANARY not in str(recorded())


def test_streamed_chat_asks_for_usage_and_hides_the_usage_chunk(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = sync_client(provider)
    with ingest.session(session_id="oa-2", agent_type="a"):
        stream = client.chat.completions.create(model="gpt-4o", messages=messages(), max_tokens=64, stream=True)
        assert isinstance(stream, openai.Stream)
        chunks = list(stream)
    assert provider.requests[0][1]["stream_options"] == {"include_usage": True}
    assert [c.choices[0].delta.content for c in chunks] == ["", "Hel", "lo!", None]  # as without the hook
    (done,) = settled(recorded())
    assert usage_of(done) == CHAT_EXPECTED
    assert (done["streamed"], done["model"]) == (True, MODEL)


def test_streamed_chat_keeps_the_usage_chunk_the_caller_asked_for(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = sync_client(provider)
    with (
        ingest.session(session_id="oa-3", agent_type="a"),
        client.chat.completions.create(
            model="gpt-4o", messages=messages(), stream=True, stream_options={"include_usage": True}
        ) as stream,
    ):
        chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 1200
    (done,) = settled(recorded())
    assert usage_of(done) == CHAT_EXPECTED


def test_chat_stream_helper_is_accounted(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = sync_client(provider)
    with (
        ingest.session(session_id="oa-4", agent_type="a"),
        client.chat.completions.stream(model="gpt-4o", messages=messages(), max_tokens=32) as stream,
    ):
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello!"
    started, done = recorded()
    assert started["max_output_tokens"] == 32
    assert usage_of(done) == CHAT_EXPECTED


def test_chat_stream_closed_early_without_usage_releases_the_reservation(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = sync_client(provider)
    with ingest.session(session_id="oa-5", agent_type="a"):
        stream = client.chat.completions.create(model="gpt-4o", messages=messages(), stream=True)
        next(iter(stream))
        stream.close()
        stream.close()
    started, aborted = recorded()
    assert aborted["kind"] == "call_aborted" and aborted["settles"] == started["event_id"]
    assert aborted["reason"] == "exception: StreamClosed"


def test_responses_api_sync_and_streamed(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = sync_client(provider)
    with ingest.session(session_id="oa-6", agent_type="a"):
        reply = client.responses.create(model="o4-mini", input=f"hi {CANARY}", max_output_tokens=2000)
        events = list(client.responses.create(model="o4-mini", input=f"hi {CANARY}", stream=True))
    assert reply.output_text == "Hello!"
    assert events[-1].type == "response.completed"
    started, done, started2, done2 = recorded()
    assert started["max_output_tokens"] == 2000 and started2["max_output_tokens"] == 4096  # the default
    assert usage_of(done) == usage_of(done2) == RESPONSES_EXPECTED
    assert (done["streamed"], done2["streamed"]) == (False, True)
    assert done["model"] == done2["model"] == "o4-mini-2025-04-16"
    assert CANARY not in str(recorded())


def test_async_client_chat_and_responses_streamed_and_not(hook) -> None:
    hook()
    provider = MockProvider(respond)

    async def main() -> list[str]:
        client = async_client(provider)
        async with ingest.session(session_id="oa-7", agent_type="a"):
            await client.chat.completions.create(model="gpt-4o", messages=messages())
            stream = await client.chat.completions.create(model="gpt-4o", messages=messages(), stream=True)
            assert isinstance(stream, openai.AsyncStream)
            texts = [c.choices[0].delta.content or "" async for c in stream]
            await client.responses.create(model="o4-mini", input="hi")
            async with await client.responses.create(model="o4-mini", input="hi", stream=True) as events:
                async for _ in events:
                    pass
            return texts

    assert asyncio.run(main()) == ["", "Hel", "lo!", ""]
    done = settled(recorded())
    assert [usage_of(e) for e in done] == [CHAT_EXPECTED, CHAT_EXPECTED, RESPONSES_EXPECTED, RESPONSES_EXPECTED]
    assert [e["streamed"] for e in done] == [False, True, False, True]


def test_killed_session_raises_before_any_request(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = sync_client(provider)
    with ingest.session(session_id="oa-8", agent_type="a"):
        kill("oa-8")
        with pytest.raises(ingest.BudgetExceeded) as stop:
            client.chat.completions.create(model="gpt-4o", messages=messages())
        with pytest.raises(ingest.BudgetExceeded):
            client.responses.create(model="o4-mini", input="hi", stream=True)

        async def main() -> None:
            aclient = async_client(provider)
            with pytest.raises(ingest.BudgetExceeded):
                await aclient.chat.completions.create(model="gpt-4o", messages=messages(), stream=True)

        asyncio.run(main())
    assert provider.requests == []
    assert stop.value.policy_id == "p-kill"
    assert recorded() == []


def test_provider_error_releases_the_reservation_and_propagates(hook) -> None:
    hook()
    provider = MockProvider(lambda path, body: httpx2.Response(429, json={"error": {"message": "slow down"}}))
    client = sync_client(provider)
    with ingest.session(session_id="oa-9", agent_type="a"), pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=messages())
    _started, aborted = recorded()
    assert aborted["kind"] == "call_aborted" and aborted["reason"] == "exception: RateLimitError"


def test_a_recording_failure_never_breaks_the_call(hook, monkeypatch: pytest.MonkeyPatch) -> None:
    hook()

    def broken(usage: Any) -> Any:
        raise RuntimeError("bug in the hook")

    monkeypatch.setattr("ingest.integrations.openai_sdk.openai_chat_usage", broken)
    provider = MockProvider(respond)
    client = sync_client(provider)
    with ingest.session(session_id="oa-10", agent_type="a"):
        reply = client.chat.completions.create(model="gpt-4o", messages=messages())
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=messages(), stream=True))
    assert reply.usage is not None and reply.usage.prompt_tokens == 1200
    assert len(chunks) == 4
    assert ingest.stats().errors >= 2
    kinds = [e["kind"] for e in recorded()]
    assert kinds == ["call_started", "call_aborted", "call_started", "call_aborted"]
    assert usage_module.openai_chat_usage(CHAT_USAGE) == ingest.Usage(1000, 300, 200, 0, 64)


def test_outside_a_session_calls_pass_untouched(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = instrument_openai(sync_client(provider))  # a second instrument does not double
    client.chat.completions.create(model="gpt-4o", messages=messages())
    assert len(provider.requests) == 1
    assert recorded() == []
    bound = ingest.session(session_id="oa-11", agent_type="a")
    other = instrument_openai(
        openai.OpenAI(api_key="sk-test", http_client=provider.client(), max_retries=0), session=bound
    )
    other.chat.completions.create(model="gpt-4o", messages=messages())
    (_started, done) = recorded()
    assert done["session_id"] == "oa-11" and usage_of(done) == CHAT_EXPECTED


def test_with_raw_response_is_accounted_streamed_and_not(hook) -> None:
    hook()
    provider = MockProvider(respond)
    client = sync_client(provider)
    with ingest.session(session_id="oa-12", agent_type="a"):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages())
        assert raw.parse().choices[0].message.content == "Hello!"
        raw_stream = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages(), stream=True)
        assert len(list(raw_stream.parse())) == 4
    done = settled(recorded())
    assert [(usage_of(e), e["streamed"]) for e in done] == [(CHAT_EXPECTED, False), (CHAT_EXPECTED, True)]


def test_responses_stream_helper_is_accounted(hook) -> None:
    hook()
    client = sync_client(MockProvider(respond))
    with (
        ingest.session(session_id="oa-13", agent_type="a"),
        client.responses.stream(model="o4-mini", input="hi", max_output_tokens=300) as stream,
    ):
        final = stream.get_final_response()
    assert final.output_text == "Hello!"
    started, done = recorded()
    assert started["max_output_tokens"] == 300
    assert (usage_of(done), done["streamed"]) == (RESPONSES_EXPECTED, True)
