"""API keys: the store (chDB), the auth dependency over HTTP, team isolation, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import nullcontext
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from agentledger import cli
from agentledger.settings import get_settings
from api.app import create_app
from api.auth import AuthConfigError
from api.keys import InvalidKeySpec, KeyStore, UnknownKey, parse_key
from api.migrations import migrate
from tests.api.conftest import ROOT, sink_until_caught_up

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store_env(settings_factory, warehouse_factory):
    settings = settings_factory()
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    return settings, wh


def test_create_verify_revoke(store_env):
    settings, wh = store_env
    store = KeyStore(wh, settings.database, cache_s=5)
    key, text = store.create(["reports:read", "ingest", "ingest"], team="payments", name="ci")
    key_id, secret = parse_key(text)
    assert key_id == key.key_id and len(key_id) == 12 and len(secret) == 43
    assert text == f"alk_{key_id}_{secret}"

    got = store.verify(text)
    assert got is not None
    assert (got.key_id, got.scopes, got.team, got.name) == (
        key_id,
        frozenset({"ingest", "reports:read"}),
        "payments",
        "ci",
    )
    assert got.allows("ingest") and got.allows("reports:read") and not got.allows("budgets:write")

    # only the hash is stored
    rows = wh.query("SELECT secret_sha256 FROM {db:Identifier}.api_keys", {"db": settings.database})
    assert len(rows) == 1 and secret not in rows[0]["secret_sha256"] and len(rows[0]["secret_sha256"]) == 64

    assert store.verify(f"alk_{key_id}_{'A' * 43}") is None  # wrong secret
    assert store.verify(text + "x") is None  # malformed
    assert store.verify("alk_000000000000_" + secret) is None  # unknown id

    other, _ = store.create(["admin"])
    assert [k.key_id for k in store.list_keys()] == sorted([key_id, other.key_id])
    revoked = store.revoke(key_id)
    assert revoked.revoked_at is not None
    assert store.verify(text) is None  # the revoking store forgets its cache at once
    assert [k.key_id for k in store.list_keys()] == [other.key_id]
    assert {k.key_id: k.revoked for k in store.list_keys(include_revoked=True)} == {key_id: True, other.key_id: False}
    assert store.revoke(key_id).revoked_at == revoked.revoked_at  # revoking twice is a no-op
    with pytest.raises(UnknownKey):
        store.revoke("ffffffffffff")


def test_revocation_elsewhere_takes_effect_when_the_cache_expires(store_env):
    settings, wh = store_env
    clock = Clock()
    api_side = KeyStore(wh, settings.database, cache_s=5, clock=clock)
    cli_side = KeyStore(wh, settings.database, cache_s=0)
    key, text = cli_side.create(["ingest"])
    assert api_side.verify(text) == key
    cli_side.revoke(key.key_id)
    clock.now += 4.9
    assert api_side.verify(text) is not None  # still cached
    clock.now += 0.2
    assert api_side.verify(text) is None


@pytest.mark.parametrize(
    ("scopes", "team"), [([], None), (["ingest", "write"], None), (["admin"], " padded"), (["admin"], "x" * 129)]
)
def test_bad_key_specs_are_refused(store_env, scopes, team):
    settings, wh = store_env
    with pytest.raises(InvalidKeySpec):
        KeyStore(wh, settings.database).create(scopes, team=team)


def _priced_teams(priced_event_factory):
    return [
        priced_event_factory(team=team, project=project, cost=cost, workflow_id=f"wf-{i}")
        for i, (team, project, cost) in enumerate(
            [
                ("payments", "checkout", "1.000000000001"),
                ("payments", "refunds", "2.000000000002"),
                ("search", "checkout", "4.000000000004"),
                (None, "checkout", "8.000000000008"),
            ]
        )
    ]


def test_auth_and_team_isolation_on_chargeback(
    settings_factory, warehouse_factory, priced_event_factory, produce_priced
):
    settings = settings_factory(sink_batch_seconds=0.2)
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    produce_priced(settings, _priced_teams(priced_event_factory))
    sink_until_caught_up(settings, wh)

    store = KeyStore(wh, settings.database)
    _, reader = store.create(["reports:read"])
    _, payments = store.create(["reports:read"], team="payments")
    _, ingest_only = store.create(["ingest"])
    _, admin = store.create(["admin"])
    revoked_key, revoked = store.create(["reports:read"])
    store.revoke(revoked_key.key_id)

    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        r = client.get("/v1/chargeback")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthenticated"
        for bad in ("nonsense", reader + "x", revoked, reader[:-1] + ("A" if reader[-1] != "A" else "B")):
            r = client.get("/v1/chargeback", headers={"Authorization": f"Bearer {bad}"})
            assert r.status_code == 401, bad
        r = client.get("/v1/chargeback", headers={"Authorization": f"Bearer {ingest_only}"})
        assert r.status_code == 403
        assert r.json()["error"] == {
            "code": "forbidden",
            "field": "scope",
            "message": f"the key {parse_key(ingest_only)[0]} lacks the 'reports:read' scope",
        }
        # ops endpoints stay open
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200

        def report(key: str, header: str = "bearer", **params: str) -> dict:
            headers = {"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key}
            r = client.get("/v1/chargeback", params=params, headers=headers)
            assert r.status_code == 200, r.text
            return r.json()

        everything = report(reader, group_by="team")
        assert [(row["group"]["team"], row["cost"]) for row in everything["rows"]] == [
            ("payments", "3.000000000003"),
            ("search", "4.000000000004"),
            (None, "8.000000000008"),
        ]
        assert report(admin, header="x-api-key", group_by="team")["total"]["cost"] == "15.000000000015"

        # the team key sees its team only, whatever it groups by
        by_team = report(payments, group_by="team")
        assert [(row["group"]["team"], row["cost"]) for row in by_team["rows"]] == [("payments", "3.000000000003")]
        by_project = report(payments, header="x-api-key", group_by="project")
        assert [(row["group"]["project"], row["cost"]) for row in by_project["rows"]] == [
            ("checkout", "1.000000000001"),
            ("refunds", "2.000000000002"),
        ]
        assert by_project["total"]["cost"] == "3.000000000003" and by_project["total"]["calls"] == 2
        overall = report(payments, group_by="")
        assert Decimal(overall["total"]["cost"]) == Decimal("3.000000000003")


def test_key_admin_endpoints(store_env):
    settings, wh = store_env
    store = KeyStore(wh, settings.database)
    _, admin = store.create(["admin"])
    _, team_admin = store.create(["admin"], team="payments")
    _, reader = store.create(["reports:read"])
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        as_admin = {"Authorization": f"Bearer {admin}"}
        r = client.post("/v1/keys", json={"scopes": ["ingest"], "team": "search", "name": "agent"}, headers=as_admin)
        assert r.status_code == 201, r.text
        created = r.json()
        assert (created["scopes"], created["team"], created["name"]) == (["ingest"], "search", "agent")
        assert parse_key(created["key"])[0] == created["key_id"]
        new_key = {"Authorization": f"Bearer {created['key']}"}
        assert client.get("/v1/chargeback", headers=new_key).status_code == 403  # ingest only

        for other in (team_admin, reader):
            r = client.post("/v1/keys", json={"scopes": ["admin"]}, headers={"Authorization": f"Bearer {other}"})
            assert r.status_code == 403
        r = client.post("/v1/keys", json={"scopes": ["root"]}, headers=as_admin)
        assert r.status_code == 422 and r.json()["error"]["field"] == "scopes"

        listed = client.get("/v1/keys", headers=as_admin).json()
        assert created["key_id"] in {k["key_id"] for k in listed}
        assert all("key" not in k for k in listed)

        r = client.delete(f"/v1/keys/{created['key_id']}", headers=as_admin)
        assert r.status_code == 200 and r.json()["revoked_at"] is not None
        # revoked through the API: refused at once, not after the cache time
        r = client.post("/v1/events", json=[], headers=new_key)
        assert r.status_code == 401
        assert client.delete("/v1/keys/ffffffffffff", headers=as_admin).status_code == 404


def test_auth_disabled_only_on_loopback(settings_factory, warehouse_factory):
    settings = settings_factory(auth="disabled", api_host="0.0.0.0")
    with pytest.raises(AuthConfigError):
        create_app(settings, with_sink=False)
    settings = settings_factory(auth="disabled")
    wh = warehouse_factory(settings)
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        assert client.get("/v1/chargeback").status_code == 200


@pytest.fixture
def cli_env(settings_factory, monkeypatch):
    settings = settings_factory()
    monkeypatch.setenv("AGENTLEDGER_CHDB_PATH", str(settings.chdb_path))
    monkeypatch.setenv("AGENTLEDGER_DATABASE", settings.database)
    monkeypatch.delenv("CLICKHOUSE_URL", raising=False)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_cli_create_list_revoke_on_the_warehouse(cli_env, warehouse_factory):
    runner = CliRunner()
    result = runner.invoke(
        cli.app, ["keys", "create", "--scope", "ingest", "--scope", "reports:read", "--team", "payments"]
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert (created["scopes"], created["team"]) == (["ingest", "reports:read"], "payments")

    result = runner.invoke(cli.app, ["keys", "list"])
    assert result.exit_code == 0, result.output
    assert [k["key_id"] for k in json.loads(result.stdout)] == [created["key_id"]]

    result = runner.invoke(cli.app, ["keys", "revoke", created["key_id"]])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["revoked_at"] is not None
    assert json.loads(runner.invoke(cli.app, ["keys", "list"]).stdout) == []
    assert runner.invoke(cli.app, ["keys", "create", "--scope", "root"]).exit_code == 2

    wh = warehouse_factory(cli_env)
    assert KeyStore(wh, cli_env.database).verify(created["key"]) is None


def test_cli_fails_clearly_while_the_api_holds_the_chdb_folder(cli_env, warehouse_factory):
    wh = warehouse_factory(cli_env)  # this process holds the folder, as `agentledger api` would
    migrate(wh, cli_env.database)
    env = {**os.environ, "AGENTLEDGER_CHDB_PATH": str(cli_env.chdb_path), "AGENTLEDGER_DATABASE": cli_env.database}
    done = subprocess.run(
        [sys.executable, "-m", "agentledger.cli", "keys", "list"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "WarehouseLocked" in done.stderr and "--api" in done.stderr


def test_cli_goes_through_the_api_with_an_admin_key(cli_env, warehouse_factory, monkeypatch):
    wh = warehouse_factory(cli_env)
    migrate(wh, cli_env.database)
    _, admin = KeyStore(wh, cli_env.database).create(["admin"])
    with TestClient(create_app(get_settings(), wh, with_sink=False)) as client:
        client.headers["Authorization"] = f"Bearer {admin}"
        monkeypatch.setattr(cli, "_api_client", lambda url, key: nullcontext(client))  # the CLI closes it
        runner = CliRunner()
        args = ["--api", "http://testserver", "--admin-key", admin]
        result = runner.invoke(cli.app, ["keys", "create", "--scope", "budgets:write", *args])
        assert result.exit_code == 0, result.output
        created = json.loads(result.stdout)
        assert created["scopes"] == ["budgets:write"] and created["key"].startswith("alk_")
        listed = json.loads(runner.invoke(cli.app, ["keys", "list", *args]).stdout)
        assert sorted(k["scopes"][0] for k in listed) == ["admin", "budgets:write"]
        result = runner.invoke(cli.app, ["keys", "revoke", created["key_id"], *args])
        assert result.exit_code == 0 and json.loads(result.stdout)["revoked_at"] is not None
        result = runner.invoke(cli.app, ["keys", "revoke", "ffffffffffff", *args])
        assert result.exit_code == 1 and "404" in result.stderr
