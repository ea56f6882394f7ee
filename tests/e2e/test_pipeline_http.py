"""The whole pipeline with the hook's HTTP transport, for real:

hook (transport="http") → POST /v1/events of the API served by uvicorn (auth required) →
Kafka → faust worker subprocess → Kafka → sink thread → chDB → GET /v1/chargeback.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

import ingest
from agentledger.settings import Settings
from api.app import create_app
from api.keys import KeyStore
from api.migrations import migrate
from tests.api.conftest import warehouse_factory
from tests.e2e.test_pipeline import CALLS, TOOL_FEE, list_price
from tests.ingest.live_api import LiveApi

pytestmark = pytest.mark.integration

__all__ = ["warehouse_factory"]


def test_calls_recorded_over_http_are_charged_exactly_once(
    settings_factory: Callable[..., Settings],
    warehouse_factory: Callable[[Settings], Any],
    worker_factory: Callable[[Settings], Any],
    hook: Any,
) -> None:
    settings = settings_factory(auth="required")
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    store = KeyStore(wh, settings.database)
    ingest_key = store.create(["ingest"], name="agent")[1]
    reader = {"Authorization": f"Bearer {store.create(['reports:read'], name='finance')[1]}"}
    worker_factory(settings)
    server = LiveApi(lambda: create_app(settings, wh, with_sink=True))
    server.start()
    try:
        hook(settings=settings, transport="http", api_url=server.url, api_key=ingest_key)
        expected: dict[str, Decimal] = defaultdict(Decimal)
        sessions: dict[str, ingest.Session] = {}
        for team, session_id, provider, model, tokens_in, tokens_out, cache_read in CALLS:
            if session_id not in sessions:
                sessions[session_id] = ingest.session(session_id=session_id, agent_type="pr-reviewer", team=team)
            sessions[session_id].record_llm_call(
                provider, model, input_tokens=tokens_in, output_tokens=tokens_out, cache_read_tokens=cache_read
            )
            expected[team] += list_price(provider, model, tokens_in, tokens_out, cache_read)
        # a retried step: same event_id posted twice, charged once
        retry = ingest.session(session_id="pay-3", agent_type="pr-reviewer", team="payments", workflow_id="wf-r")
        assert retry.record_llm_call("openai", "gpt-4o", 2000, 500, step=7, step_name="s") == retry.record_llm_call(
            "openai", "gpt-4o", 2000, 500, step=7, step_name="s"
        )
        expected["payments"] += list_price("openai", "gpt-4o", 2000, 500, 0)
        sessions["srch-2"].record_tool_call("web_search", duration_ms=420, fee=TOOL_FEE)
        expected["search"] += TOOL_FEE
        assert ingest.flush(timeout=30)
        assert ingest.stats().delivered == len(CALLS) + 3

        with httpx.Client(base_url=server.url, headers=reader, timeout=30) as client:
            body = wait_for_calls(client, len(CALLS) + 2)
        by_team = {row["group"]["team"]: row for row in body["rows"]}
        assert set(by_team) == {"payments", "search"}
        for team, cost in expected.items():
            assert Decimal(by_team[team]["cost"]) == cost, team
        assert by_team["payments"]["calls"] == 4 and by_team["search"]["calls"] == 4
        assert by_team["payments"]["input_tokens"] == 1200 + 5000 + 3100 + 2000
        assert by_team["search"]["cache_read_tokens"] == 4096
        assert Decimal(body["total"]["cost"]) == sum(expected.values())
    finally:
        ingest.close(timeout=1.0)
        server.stop()


def wait_for_calls(client: httpx.Client, count: int, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get("/v1/chargeback", params={"group_by": "team"})
        assert response.status_code == 200, response.text
        body = response.json()
        if body["total"]["calls"] >= count:
            time.sleep(1.5)  # anything extra (a double count) would show up now
            return client.get("/v1/chargeback", params={"group_by": "team"}).json()
        time.sleep(0.3)
    raise AssertionError(f"only {body.get('total', {}).get('calls')} of {count} calls reached the warehouse")
