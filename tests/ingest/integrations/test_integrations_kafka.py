"""The integrations through the real broker: exact usage on the cost-events topic, no prompt
text in any message, and a kill signal from the signals topic stopping a call before it is sent."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal

import anthropic
import openai
import orjson
import pytest

import ingest
from ingest import runtime
from ingest.integrations import AgentLedgerCallbackHandler, instrument_anthropic, instrument_openai
from schemas.budgets import Action, Scope, Signal
from tests.ingest.conftest import publish, read_topic
from tests.ingest.integrations import test_anthropic as an
from tests.ingest.integrations import test_langchain as lc
from tests.ingest.integrations import test_openai as oa
from tests.ingest.integrations.conftest import CANARY, MockProvider, usage_of

pytestmark = pytest.mark.integration


def test_every_integration_lands_exact_usage_on_the_topic_without_prompt_text(settings_factory, hook) -> None:
    settings = settings_factory()
    hook(settings)
    openai_mock, anthropic_mock = MockProvider(oa.respond), MockProvider(an.respond)
    oa_client = instrument_openai(openai.OpenAI(api_key="k", http_client=openai_mock.client(), max_retries=0))
    an_client = instrument_anthropic(
        anthropic.AsyncAnthropic(api_key="k", http_client=anthropic_mock.async_client(), max_retries=0)
    )
    handler = AgentLedgerCallbackHandler()
    with ingest.session(session_id="int-1", agent_type="a", team="platform"):
        oa_client.chat.completions.create(model="gpt-4o", messages=oa.messages())
        list(oa_client.chat.completions.create(model="gpt-4o", messages=oa.messages(), stream=True))
        list(oa_client.responses.create(model="o4-mini", input=f"hi {CANARY}", stream=True))

        async def anthropic_calls() -> None:
            await an_client.messages.create(model="claude-sonnet-4-0", max_tokens=64, messages=an.prompt())
            async with an_client.messages.stream(model="claude-sonnet-4-0", max_tokens=64, messages=an.prompt()) as s:
                await s.get_final_message()

        asyncio.run(anthropic_calls())
        lc.model().invoke(lc.prompt(), config={"callbacks": [handler]})
        lc.lookup.invoke({"query": CANARY}, config={"callbacks": [handler]})
    assert ingest.flush(30) is True

    messages = read_topic(settings.kafka_bootstrap, settings.topic("cost-events"))
    assert all(CANARY.encode() not in m.value() for m in messages)
    events = [orjson.loads(m.value()) for m in messages]
    assert len({e["event_id"] for e in events}) == len(events) == 6 * 2 + 1
    settled = [(e["provider"], e["streamed"], usage_of(e)) for e in events if e["kind"] == "llm_call"]
    assert settled == [
        ("openai", False, oa.CHAT_EXPECTED),
        ("openai", True, oa.CHAT_EXPECTED),
        ("openai", True, oa.RESPONSES_EXPECTED),
        ("anthropic", False, an.EXPECTED),
        ("anthropic", True, an.EXPECTED),
        ("openai", False, lc.EXPECTED),
    ]
    started = {e["event_id"] for e in events if e["kind"] == "call_started"}
    assert {e["settles"] for e in events if e["kind"] == "llm_call"} == started
    (tool,) = [e for e in events if e["kind"] == "tool_call"]
    assert tool["tool_name"] == "lookup" and tool["team"] == "platform"


def test_a_kill_from_the_signals_topic_stops_the_next_call_before_it_is_sent(settings_factory, hook) -> None:
    settings = settings_factory()
    hook(settings)
    rt = runtime.current()
    assert rt is not None and rt.guards.ready.wait(10)
    mock = MockProvider(oa.respond)
    client = instrument_openai(openai.OpenAI(api_key="k", http_client=mock.client(), max_retries=0))
    with ingest.session(session_id="int-2", agent_type="a"):
        client.chat.completions.create(model="gpt-4o", messages=oa.messages())
        signal = Signal(
            signal_id="int-2:kill",
            session_id="int-2",
            action=Action.KILL,
            policy_id="cap-int",
            scope=(Scope.SESSION,),
            scope_value="int-2",
            limit_tokens=1000,
            spent_tokens=1500,
            spent_cost=Decimal("0.01"),
            reason="session over 1000 tokens",
            issued_at=datetime.now(UTC),
        )
        publish(settings.kafka_bootstrap, settings.topic("signals"), "int-2", signal)
        deadline = time.monotonic() + 10
        while rt.guards.get("int-2") is None and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(ingest.BudgetExceeded) as stop:
            client.chat.completions.create(model="gpt-4o", messages=oa.messages(), stream=True)
    assert stop.value.policy_id == "cap-int"
    assert len(mock.requests) == 1  # the first call only
