"""The whole pipeline, for real: SDK hook → Kafka → faust worker → Kafka → sink → chDB → API.

No mocks: the local Apache Kafka broker, the worker as its own process, the embedded
ClickHouse engine in this process behind the FastAPI app and its sink thread.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from genai_prices import Usage, calc_price

import ingest
from agentledger.settings import Settings
from api.app import create_app
from processors.policies import publish_policy
from schemas.budgets import Action, BudgetPolicy, Scope, Window
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.integration

CALLS = (
    # team, session, provider, model, input, output, cache read
    ("payments", "pay-1", "openai", "gpt-4o", 1200, 340, 0),
    ("payments", "pay-1", "openai", "gpt-4o-mini", 5000, 800, 2048),
    ("payments", "pay-2", "anthropic", "claude-sonnet-4-5", 3100, 1200, 0),
    ("search", "srch-1", "openai", "gpt-4.1", 777, 123, 0),
    ("search", "srch-1", "anthropic", "claude-haiku-4-5", 15000, 64, 4096),
    ("search", "srch-2", "openai", "gpt-4o", 1, 1, 0),
)
TOOL_FEE = Decimal("0.0025")


def list_price(provider: str, model: str, input_tokens: int, output_tokens: int, cache_read: int) -> Decimal:
    """genai-prices' own price; its input_tokens include cache reads, ours exclude them."""
    usage = Usage(input_tokens=input_tokens + cache_read, output_tokens=output_tokens, cache_read_tokens=cache_read)
    return calc_price(
        usage, model_ref=model, provider_id=provider, genai_request_timestamp=datetime.now(UTC)
    ).total_price


def wait_for_calls(client: TestClient, headers: dict[str, str], count: int, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get("/v1/chargeback", params={"group_by": "team"}, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["total"]["calls"] >= count:
            time.sleep(1.5)  # anything extra (a double count) would show up now
            return client.get("/v1/chargeback", params={"group_by": "team"}, headers=headers).json()
        time.sleep(0.3)
    raise AssertionError(f"only {body.get('total', {}).get('calls')} of {count} calls reached the warehouse")


def test_recorded_calls_are_charged_at_genai_prices_exactly_once(stack: Stack) -> None:
    expected: dict[str, Decimal] = defaultdict(Decimal)
    sessions: dict[str, ingest.Session] = {}
    for team, session_id, provider, model, tokens_in, tokens_out, cache_read in CALLS:
        if session_id not in sessions:
            sessions[session_id] = ingest.session(
                session_id=session_id, agent_type="pr-reviewer", team=team, project="e2e", customer="acme"
            )
        sessions[session_id].record_llm_call(
            provider=provider,
            model=model,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cache_read_tokens=cache_read,
        )
        expected[team] += list_price(provider, model, tokens_in, tokens_out, cache_read)
    # A retried step: the same workflow, step and name give the same event_id, sent twice.
    retry = ingest.session(session_id="pay-3", agent_type="pr-reviewer", team="payments", workflow_id="wf-retry")
    first = retry.record_llm_call("openai", "gpt-4o", 2000, 500, step=7, step_name="summarise")
    second = retry.record_llm_call("openai", "gpt-4o", 2000, 500, step=7, step_name="summarise")
    assert first == second
    expected["payments"] += list_price("openai", "gpt-4o", 2000, 500, 0)
    sessions["srch-2"].record_tool_call("web_search", duration_ms=420, fee=TOOL_FEE)
    expected["search"] += TOOL_FEE
    assert ingest.flush(timeout=30)

    body = wait_for_calls(stack.client, stack.headers, count=len(CALLS) + 2)

    by_team = {row["group"]["team"]: row for row in body["rows"]}
    assert set(by_team) == {"payments", "search"}
    for team, cost in expected.items():
        assert Decimal(by_team[team]["cost"]) == cost, team
    assert by_team["payments"]["calls"] == 4
    assert by_team["search"]["calls"] == 4  # three LLM calls and the tool call
    assert by_team["payments"]["input_tokens"] == 1200 + 5000 + 3100 + 2000
    assert by_team["search"]["cache_read_tokens"] == 4096
    assert Decimal(body["total"]["cost"]) == sum(expected.values())


def test_a_session_over_its_token_cap_is_killed_at_its_next_call(stack: Stack, settings: Settings) -> None:
    cap = BudgetPolicy(policy_id="session-cap", scope=(Scope.SESSION,), limit_tokens=5_000, action=Action.KILL)
    publish_policy(settings, cap)
    time.sleep(2.0)  # the worker reads policies from the compacted topic

    under = ingest.session(session_id="under-cap", agent_type="researcher", team="search")
    for _ in range(4):
        under.record_llm_call("openai", "gpt-4o-mini", 800, 200)  # 4 x 1,000 tokens < 5,000

    over = ingest.session(session_id="over-cap", agent_type="researcher", team="search")
    calls_before_kill = 0
    with pytest.raises(ingest.BudgetExceeded) as stopped:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            over.record_llm_call("openai", "gpt-4o-mini", 2400, 600)  # 3,000 tokens each
            calls_before_kill += 1
            time.sleep(0.05)
    # The kill follows the second call (6,000 > 5,000); calls recorded while it travelled
    # are the only overshoot.
    assert 2 <= calls_before_kill <= 2 + 40
    assert stopped.value.policy_id == "session-cap"
    with pytest.raises(ingest.BudgetExceeded):
        over.check()

    assert ingest.flush(timeout=30)
    wait_for_calls(stack.client, stack.headers, count=4 + calls_before_kill + 1)
    under.check()  # every call of the session under its cap is processed: still not stopped
    under.record_llm_call("openai", "gpt-4o-mini", 100, 100)


def test_signal_for_the_killed_session_only(stack: Stack, settings: Settings) -> None:
    """A per-session budget stops that session; a session of the same team goes on."""
    publish_policy(
        settings,
        BudgetPolicy(
            policy_id="tiny",
            scope=(Scope.SESSION,),
            match={Scope.SESSION: "doomed"},
            limit_cost=Decimal("0.001"),
            action=Action.KILL,
        ),
    )
    time.sleep(2.0)
    doomed = ingest.session(session_id="doomed", agent_type="a", team="t")
    bystander = ingest.session(session_id="bystander", agent_type="a", team="t")
    doomed.record_llm_call("openai", "gpt-4o", 10_000, 1_000)  # $0.035 > $0.001
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            doomed.check()
        except ingest.BudgetExceeded as stop:
            assert stop.policy_id == "tiny"
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the doomed session was never stopped")
    bystander.record_llm_call("openai", "gpt-4o", 10_000, 1_000)
    bystander.check()


def test_a_session_starting_in_a_killed_team_is_refused_at_its_first_call(stack: Stack, settings: Settings) -> None:
    """A team budget's kill stops the team's running sessions, and a session of that team that
    starts afterwards is refused before its first call (it records nothing); another team's new
    session goes on."""
    publish_policy(
        settings,
        BudgetPolicy(
            policy_id="team-day",
            scope=(Scope.TEAM,),
            window=Window.CALENDAR_DAY,
            limit_tokens=20_000,
            action=Action.KILL,
        ),
    )
    time.sleep(2.0)
    runners = [ingest.session(session_id=f"red-{i}", agent_type="a", team="red") for i in range(2)]
    stopped: ingest.BudgetExceeded | None = None
    deadline = time.monotonic() + 30
    while stopped is None and time.monotonic() < deadline:
        for runner in runners:
            try:
                runner.record_llm_call("openai", "gpt-4o-mini", 2400, 600)  # 3,000 tokens
            except ingest.BudgetExceeded as stop:
                stopped = stop
                break
        time.sleep(0.05)
    assert stopped is not None and stopped.policy_id == "team-day"

    late = ingest.session(session_id="red-late", agent_type="b", team="red")
    with pytest.raises(ingest.BudgetExceeded) as refused:
        late.check()
    assert (refused.value.policy_id, refused.value.session_id) == ("team-day", "red-late")
    assert late.used_tokens == 0
    other = ingest.session(session_id="blue-new", agent_type="a", team="blue")
    other.check()
    other.record_llm_call("openai", "gpt-4o-mini", 100, 100)


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(auth="disabled")


@pytest.fixture
def stack(settings: Settings, worker_factory: Callable[[Settings], Any], hook: Any) -> Any:
    worker_factory(settings)
    hook(settings=settings)
    with TestClient(create_app(settings, with_sink=True)) as client:
        yield Stack(client=client, headers={})
