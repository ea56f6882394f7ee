"""/v1/budgets through the real broker: policy events on the compacted topic, the API's cache
reading them back, scopes and team restriction, bad input."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from agentledger import cli
from api.app import create_app
from api.keys import KeyStore
from api.migrations import migrate
from processors.policies import publish_policy
from schemas.budgets import BudgetPolicy
from schemas.codec import encode
from schemas.topics import BUDGET_POLICIES
from tests.conftest import read_topic

pytestmark = pytest.mark.integration


def _topic_records(settings) -> list[tuple[bytes | None, bytes | None]]:
    return read_topic(settings, BUDGET_POLICIES.suffix)


@pytest.fixture
def env(settings_factory, warehouse_factory):
    settings = settings_factory(auth="required")
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    store = KeyStore(wh, settings.database, cache_s=0)
    keys = {
        "admin": store.create(["admin"])[1],
        "reader": store.create(["reports:read"])[1],
        "pay_writer": store.create(["budgets:write", "reports:read"], team="payments")[1],
        "search_reader": store.create(["reports:read"], team="search")[1],
    }
    return settings, wh, keys


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _policy(policy_id: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"policy_id": policy_id, "scope": ["team"], "limit_cost": "25.5", "action": "pause"}
    body.update(extra)
    return body


def test_budget_crud_writes_the_compacted_topic_and_reads_it_back(env):
    settings, wh, keys = env
    admin = _h(keys["admin"])
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        assert client.get("/v1/budgets", headers=admin).json() == {"budgets": []}

        r = client.put("/v1/budgets/pay-cap", json=_policy("pay-cap", match={"team": "payments"}), headers=admin)
        assert r.status_code == 201, r.text
        assert r.json()["limit_cost"] == "25.5" and r.json()["match"] == {"team": "payments"}
        # read-your-write: the cache has read the topic up to this write
        got = client.get("/v1/budgets/pay-cap", headers=admin).json()
        written = r.json()
        assert written.pop("opening_balance")["status"] == "none"  # nothing spent yet
        assert got == written

        r = client.put(
            "/v1/budgets/pay-cap", json=_policy("pay-cap", match={"team": "payments"}, limit_cost="30"), headers=admin
        )
        assert r.status_code == 200 and r.json()["limit_cost"] == "30"
        r = client.post("/v1/budgets", json=_policy("all-teams", limit_tokens=1000, limit_cost=None), headers=admin)
        assert r.status_code == 201, r.text
        listed = client.get("/v1/budgets", headers=_h(keys["reader"])).json()["budgets"]
        assert [p["policy_id"] for p in listed] == ["all-teams", "pay-cap"]
        assert listed[1]["limit_cost"] == "30"

        # a policy written elsewhere (the CLI) shows up too: the topic is the source
        publish_policy(settings, BudgetPolicy(policy_id="cli-made", scope=("session",), limit_tokens=5))
        deadline = time.monotonic() + 10
        while client.get("/v1/budgets/cli-made", headers=admin).status_code != 200:
            assert time.monotonic() < deadline, "policy from the topic never reached the cache"
            time.sleep(0.1)

        assert client.delete("/v1/budgets/cli-made", headers=admin).status_code == 204
        assert client.get("/v1/budgets/cli-made", headers=admin).status_code == 404
        assert client.delete("/v1/budgets/cli-made", headers=admin).status_code == 404

    records = _topic_records(settings)
    expected_pay = BudgetPolicy.model_validate(_policy("pay-cap", match={"team": "payments"}, limit_cost="30"))
    assert (b"pay-cap", encode(expected_pay)) in records
    assert records[-1] == (b"cli-made", None)  # the tombstone

    # a fresh API process rebuilds the same view from the topic alone
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        listed = client.get("/v1/budgets", headers=admin).json()["budgets"]
        assert [p["policy_id"] for p in listed] == ["all-teams", "pay-cap"]


def test_budget_scopes_and_team_restriction(env):
    settings, wh, keys = env
    admin, reader = _h(keys["admin"]), _h(keys["reader"])
    pay, search = _h(keys["pay_writer"]), _h(keys["search_reader"])
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        assert client.put("/v1/budgets/global", json=_policy("global"), headers=admin).status_code == 201
        # a read-only key cannot change budgets
        r = client.put("/v1/budgets/x", json=_policy("x", match={"team": "payments"}), headers=reader)
        assert r.status_code == 403 and r.json()["error"]["field"] == "scope"
        assert client.delete("/v1/budgets/global", headers=reader).status_code == 403
        assert client.get("/v1/budgets").status_code == 401

        # a team key sets only policies pinned to its team
        r = client.put("/v1/budgets/pay-own", json=_policy("pay-own", match={"team": "payments"}), headers=pay)
        assert r.status_code == 201, r.text
        r = client.put("/v1/budgets/pay-any", json=_policy("pay-any"), headers=pay)
        assert r.status_code == 403 and r.json()["error"]["field"] == "match"
        r = client.put("/v1/budgets/pay-other", json=_policy("pay-other", match={"team": "search"}), headers=pay)
        assert r.status_code == 403
        # ... cannot take over an unpinned policy by re-pinning it, nor delete or see it
        r = client.put("/v1/budgets/global", json=_policy("global", match={"team": "payments"}), headers=pay)
        assert r.status_code == 403 and r.json()["error"]["field"] == "policy_id"
        assert client.get("/v1/budgets/global", headers=pay).status_code == 404
        assert client.delete("/v1/budgets/global", headers=pay).status_code == 404
        assert [p["policy_id"] for p in client.get("/v1/budgets", headers=pay).json()["budgets"]] == ["pay-own"]

        # another team sees none of them
        assert client.get("/v1/budgets", headers=search).json() == {"budgets": []}
        assert client.get("/v1/budgets/pay-own", headers=search).status_code == 404
        assert [p["policy_id"] for p in client.get("/v1/budgets", headers=admin).json()["budgets"]] == [
            "global",
            "pay-own",
        ]
        assert client.delete("/v1/budgets/pay-own", headers=pay).status_code == 204


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/budgets/a", _policy("b"), "policy_id"),
        ("/v1/budgets/a", _policy("a", limit_cost=None), "body"),
        ("/v1/budgets/a", _policy("a", thresholds=["1.5"]), "body"),
        ("/v1/budgets/a", _policy("a", scope=["planet"]), "0"),
        ("/v1/budgets/a", _policy("a", extra_field=1), "extra_field"),
        ("/v1/budgets/a", _policy("a", limit_cost="-1"), "limit_cost"),
        ("/v1/budgets/a", _policy("a", match={"team": "x" * 200}), "team"),
        ("/v1/budgets/a%20b", _policy("a b"), "policy_id"),
        ("/v1/budgets/" + "a" * 65, _policy("a" * 65), "policy_id"),
        ("/v1/budgets/a'OR'1'='1", _policy("a'OR'1'='1"), "policy_id"),
    ],
)
def test_budget_bad_input_is_422_with_the_field(env, path, body, field):
    settings, wh, keys = env
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        r = client.put(path, json=body, headers=_h(keys["admin"]))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field
        r = client.post("/v1/budgets", content=b"{not json", headers=_h(keys["admin"]))
        assert r.status_code == 422


def test_a_write_goes_out_without_an_opening_balance_when_the_warehouse_cannot_answer(env):
    """The balance is a courtesy: a failed read must not stop a budget from being set."""
    settings, wh, keys = env
    admin = _h(keys["admin"])
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        r = client.put("/v1/budgets/off", json=_policy("off"), headers=admin, params={"opening_balance": "false"})
        assert r.status_code == 201 and r.json()["opening_balance"]["status"] == "skipped"
        for table in ("event_ledger", "rollup_hourly", "rollup_daily"):
            wh.command(f"DROP TABLE {settings.database}.{table}")
        r = client.put("/v1/budgets/broken", json=_policy("broken", window="calendar_day"), headers=admin)
        assert r.status_code == 201, r.text
        opening = r.json()["opening_balance"]
        assert opening["status"] == "failed" and "UNKNOWN_TABLE" in opening["error"], opening
        assert client.get("/v1/budgets/broken", headers=admin).status_code == 200
    expected = BudgetPolicy.model_validate(_policy("broken", window="calendar_day"))
    assert (b"broken", encode(expected)) in _topic_records(settings)  # the policy, without a balance


def test_cli_budgets_set_goes_through_the_api(env, monkeypatch):
    """With --api the CLI's write is the API's: the same balance step, the same answer."""
    settings, wh, keys = env
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        client.headers["Authorization"] = f"Bearer {keys['admin']}"
        monkeypatch.setattr(cli, "_api_client", lambda url, key: nullcontext(client))  # the CLI closes it
        args = ["budgets", "set", "via-api", "--scope", "team", "--limit-cost", "5", "--window", "calendar_week",
                "--api", "http://testserver", "--admin-key", keys["admin"]]  # fmt: skip
        result = CliRunner().invoke(cli.app, args)
        assert result.exit_code == 0, result.output
        # the last line: the in-process API's own log lines land in the captured stdout too
        assert orjson.loads(result.stdout.splitlines()[-1])["opening_balance"]["status"] == "none"
        result = CliRunner().invoke(cli.app, [*args, "--no-opening-balance"])
        assert result.exit_code == 0, result.output
        assert orjson.loads(result.stdout.splitlines()[-1])["opening_balance"]["status"] == "skipped"
        assert client.get("/v1/budgets/via-api").json()["window"] == "calendar_week"
