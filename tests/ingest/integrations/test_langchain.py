"""LangChain callback handler: a fake chat model from langchain_core and a real @tool."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

import ingest
from ingest.integrations import AgentLedgerCallbackHandler
from tests.ingest.integrations.conftest import CANARY, kill, recorded, usage_of

pytestmark = pytest.mark.unit


class FakeOpenAIChat(GenericFakeChatModel):
    """A fake chat model that reports itself as OpenAI's gpt-4o-mini with a 256-token cap."""

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(
            ls_provider="openai", ls_model_name="gpt-4o-mini", ls_model_type="chat", ls_max_tokens=256
        )

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Iterator[Any]:
        """Like a real provider's stream: text chunks, then a last chunk carrying the usage."""
        message = next(self.messages)
        assert isinstance(message, AIMessage)
        for word in str(message.content).split(" "):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="", usage_metadata=message.usage_metadata, response_metadata=message.response_metadata
            )
        )


def reply(n: int = 0) -> AIMessage:
    return AIMessage(
        content=f"answer {n}",
        usage_metadata={
            "input_tokens": 1500,  # LangChain's input_tokens include the cached ones
            "output_tokens": 320,
            "total_tokens": 1820,
            "input_token_details": {"cache_read": 1000, "cache_creation": 100},
            "output_token_details": {"reasoning": 200},
        },
        response_metadata={"model_name": "gpt-4o-mini-2024-07-18"},
    )


EXPECTED = (400, 320, 1000, 100, 200)


def model(n: int = 3) -> FakeOpenAIChat:
    return FakeOpenAIChat(messages=iter([reply(i) for i in range(n)]))


def prompt() -> list[Any]:
    return [HumanMessage(content=f"What is the answer? {CANARY}")]


@tool
def lookup(query: str) -> str:
    """Look something up."""
    if query == "fail":
        raise ValueError("lookup failed")
    return f"result for {query}"


def test_chat_model_calls_are_reserved_and_settled_with_exact_usage(hook) -> None:
    hook()
    handler = AgentLedgerCallbackHandler()
    chat = model()
    with ingest.session(session_id="lc-1", agent_type="a"):
        answer = chat.invoke(prompt(), config={"callbacks": [handler]})
    assert answer.content == "answer 0"
    started, done = recorded()
    assert (started["kind"], started["provider"], started["model"]) == ("call_started", "openai", "gpt-4o-mini")
    assert started["max_output_tokens"] == 256
    assert (done["kind"], done["settles"], done["model"]) == ("llm_call", started["event_id"], "gpt-4o-mini-2024-07-18")
    assert usage_of(done) == EXPECTED
    assert CANARY not in str(recorded())


def test_async_and_streamed_calls_inside_a_chain(hook) -> None:
    hook()
    handler = AgentLedgerCallbackHandler()
    chat = model()
    chain = RunnableLambda(lambda text: [HumanMessage(content=text)]) | chat

    async def main() -> list[Any]:
        async with ingest.session(session_id="lc-2", agent_type="a"):
            first = await chain.ainvoke(f"q {CANARY}", config={"callbacks": [handler]})
            chunks = [c async for c in chain.astream("q", config={"callbacks": [handler]})]
            return [first, chunks]

    first, chunks = asyncio.run(main())
    assert first.content == "answer 0" and "".join(str(c.content) for c in chunks) == "answer 1 "
    done = [e for e in recorded() if e["kind"] == "llm_call"]
    assert len(done) == 2
    assert usage_of(done[0]) == EXPECTED
    assert usage_of(done[1]) == EXPECTED  # the streamed message's aggregated usage_metadata
    assert done[1]["model"] == "gpt-4o-mini-2024-07-18"
    assert CANARY not in str(recorded())


def test_tool_calls_are_recorded_with_name_duration_and_error(hook) -> None:
    hook()
    handler = AgentLedgerCallbackHandler()
    with ingest.session(session_id="lc-3", agent_type="a"):
        assert lookup.invoke({"query": CANARY}, config={"callbacks": [handler]}) == f"result for {CANARY}"
        with pytest.raises(ValueError, match="lookup failed"):
            lookup.invoke({"query": "fail"}, config={"callbacks": [handler]})
    ok, failed = recorded()
    assert (ok["kind"], ok["tool_name"], ok.get("error", False)) == ("tool_call", "lookup", False)
    assert (failed["tool_name"], failed["error"]) == ("lookup", True)
    assert ok["duration_ms"] >= 0
    assert CANARY not in str(recorded())


def test_killed_session_stops_model_and_tool_before_they_run(hook) -> None:
    hook()
    handler = AgentLedgerCallbackHandler()
    chat = model(1)
    with ingest.session(session_id="lc-4", agent_type="a"):
        kill("lc-4")
        with pytest.raises(ingest.BudgetExceeded):
            chat.invoke(prompt(), config={"callbacks": [handler]})
        with pytest.raises(ingest.BudgetExceeded):
            lookup.invoke({"query": "x"}, config={"callbacks": [handler]})
    assert next(chat.messages).content == "answer 0"  # the model was never called
    assert recorded() == []


def test_a_failing_model_releases_its_reservation(hook) -> None:
    hook()

    class Broken(FakeOpenAIChat):
        def _generate(self, messages: LanguageModelInput, *args: Any, **kwargs: Any) -> Any:
            raise TimeoutError("provider timed out")

    handler = AgentLedgerCallbackHandler()
    with ingest.session(session_id="lc-5", agent_type="a"), pytest.raises(TimeoutError):
        Broken(messages=iter([])).invoke(prompt(), config={"callbacks": [handler]})
    started, aborted = recorded()
    assert (aborted["kind"], aborted["settles"], aborted["reason"]) == (
        "call_aborted",
        started["event_id"],
        "exception: TimeoutError",
    )


def test_bound_session_and_no_session(hook) -> None:
    hook()
    chat = model()
    chat.invoke(prompt(), config={"callbacks": [AgentLedgerCallbackHandler()]})  # no session: nothing
    assert recorded() == []
    bound = ingest.session(session_id="lc-6", agent_type="a")
    chat.invoke(prompt(), config={"callbacks": [AgentLedgerCallbackHandler(bound)]})
    assert [e["session_id"] for e in recorded()] == ["lc-6", "lc-6"]
