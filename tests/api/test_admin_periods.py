"""Period close, re-pricing and the price catalogue, through the real broker, sink and chDB."""

from __future__ import annotations

import io
import json
import time
from contextlib import nullcontext
from datetime import timedelta
from decimal import Decimal

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient
from pyarrow import csv as pacsv
from typer.testing import CliRunner

from agentledger import cli
from agentledger.settings import get_settings
from api.app import create_app
from api.keys import KeyStore
from api.migrations import migrate
from api.repricing import adjustment_event_id, card_hash
from api.warehouse.chdb import ChdbWarehouse
from processors.pricing import price_event
from processors.ratecard import parse_rate_card
from schemas import codec
from schemas.events import CostEvent, EventKind
from schemas.topics import COST_EVENTS, topic_name
from tests.api.conftest import BASE_TIME, sink_until_caught_up

pytestmark = pytest.mark.integration


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def env(settings_factory, warehouse_factory):
    settings = settings_factory(auth="required", sink_batch_seconds=0.2)
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    store = KeyStore(wh, settings.database, cache_s=0)
    keys = {
        "admin": store.create(["admin"])[1],
        "pay": store.create(["reports:read"], team="payments")[1],
        "team_admin": store.create(["admin"], team="payments")[1],
    }
    return settings, wh, keys


def test_a_closed_month_never_changes_and_late_events_carry_over(
    env, priced_event_factory, produce_priced, monkeypatch
):
    settings, wh, keys = env
    admin, pay = _h(keys["admin"]), _h(keys["pay"])
    march = [
        priced_event_factory(cost="1.000000000001", step=i, team="payments" if i % 2 == 0 else "search")
        for i in range(4)
    ]
    produce_priced(settings, march)
    sink_until_caught_up(settings, wh)

    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        before = client.get("/v1/periods/2026-03/report", headers=admin).json()
        assert [(r["group"]["team"], r["cost"], r["calls"]) for r in before["rows"]] == [
            ("payments", "2.000000000002", 2),
            ("search", "2.000000000002", 2),
        ]
        assert before["closed"] is False

        r = client.post("/v1/periods/2026-03/close", headers=admin)
        assert r.status_code == 201, r.text
        closed_at = r.json()["closed_at"]
        again = client.post("/v1/periods/2026-03/close", headers=admin)
        assert again.status_code == 200 and again.json()["closed_at"] == closed_at
        assert client.post("/v1/periods/2026-02/close", headers=_h(keys["team_admin"])).status_code == 403
        assert client.post("/v1/periods/2026-02/close", headers=pay).status_code == 403

        closed_report = client.get("/v1/periods/2026-03/report", headers=admin)
        assert closed_report.json()["rows"] == before["rows"] and closed_report.json()["closed"] is True
        closed_team = client.get("/v1/periods/2026-03/report", headers=pay).content

    # a new event for March and a re-priced duplicate of a March event arrive after the close
    late = priced_event_factory(cost="0.5", step=10, team="payments")
    dup = march[0].model_copy(update={"cost": Decimal("9.9"), "priced_at": BASE_TIME + timedelta(days=40)})
    produce_priced(settings, [late, dup])
    sink_until_caught_up(settings, wh)

    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        # byte-identical, for the admin and for a team key
        assert client.get("/v1/periods/2026-03/report", headers=admin).content == closed_report.content
        assert client.get("/v1/periods/2026-03/report", headers=pay).content == closed_team
        april = client.get("/v1/periods/2026-04/report", headers=admin).json()
        assert april["closed"] is False
        assert [
            (r["group"]["team"], r["cost"], r["calls"], r["carried_over_cost"], r["carried_over_calls"])
            for r in april["rows"]
        ] == [("payments", "0.500000000000", 1, "0.500000000000", 1)]
        assert april["total"]["carried_over_cost"] == "0.500000000000"
        by_day = client.get("/v1/periods/2026-04/report", params={"group_by": "day"}, headers=pay).json()
        assert [r["group"]["day"] for r in by_day["rows"]] == ["2026-03-01"]  # charged in April, occurred in March
        # FOCUS by billing period: the late March event is a correction billed in April
        april_focus = client.get("/v1/periods/2026-04/report", params={"format": "focus_parquet"}, headers=pay)
        assert april_focus.status_code == 200, april_focus.text
        rows = pq.read_table(io.BytesIO(april_focus.content)).to_pylist()
        assert [
            (r["ChargeCategory"], r["ChargeClass"], r["BillingPeriodStart"].month, r["ChargePeriodStart"].month)
            for r in rows
        ] == [("Usage", "Correction", 4, 3)]
        assert [(r["BilledCost"], r["x_Team"], r["x_Calls"]) for r in rows] == [(Decimal("0.5"), "payments", 1)]
        march_focus = client.get("/v1/periods/2026-03/report", params={"format": "focus"}, headers=admin)
        assert march_focus.headers["content-type"].startswith("text/csv")
        march_rows = pacsv.read_csv(io.BytesIO(march_focus.content)).to_pylist()
        assert {r["ChargeClass"] for r in march_rows} == {None}
        assert sum(Decimal(str(r["BilledCost"])) for r in march_rows) == Decimal("4.000000000004")
        listed = client.get("/v1/periods", headers=pay).json()["closed"]
        assert [(c["period"], c["closed_at"]) for c in listed] == [("2026-03", closed_at)]

        # the CLI, through this API
        monkeypatch.setattr(cli, "_api_client", lambda url, key: nullcontext(client))
        client.headers["Authorization"] = f"Bearer {keys['admin']}"
        args = ["--api", "http://testserver", "--admin-key", keys["admin"]]
        result = CliRunner().invoke(cli.app, ["periods", "close", "2026-04", *args])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["period"] == "2026-04"
        result = CliRunner().invoke(cli.app, ["periods", "close", "2026-4", *args])
        assert result.exit_code == 1 and "422" in result.stderr


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("post", "/v1/periods/2026-13/close", "period"),
        ("post", "/v1/periods/1999-12/close", "period"),
        ("post", "/v1/periods/2099-01/close", "period"),
        ("post", "/v1/periods/26-01/close", "period"),
        ("get", "/v1/periods/2026-00/report", "period"),
        ("get", "/v1/periods/2026-03/report?group_by=team;DROP", "group_by"),
        ("get", "/v1/periods/2026-03/report?group_by=tags['x']", "group_by"),
    ],
)
def test_period_bad_input(settings_factory, warehouse_factory, method, path, field):
    settings = settings_factory(auth="disabled")
    wh = warehouse_factory(settings)
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        r = getattr(client, method)(path)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field


CARD_HALF = "version: half\ndiscounts:\n  - provider: openai\n    percent: 50\n"
CARD_80 = "version: eighty\ndiscounts:\n  - provider: openai\n    percent: 20\n"


def _cost_events(settings, timeout: float = 10.0) -> list[CostEvent]:
    topic = topic_name(settings.topic_prefix, COST_EVENTS)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "t-read"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p, 0) for p in parts]
        total = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        consumer.assign(tps)
        out: list[CostEvent] = []
        deadline = time.monotonic() + timeout
        while len(out) < total and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append(codec.decode(CostEvent, msg.value()))
        return sorted(out, key=lambda e: e.event_id)
    finally:
        consumer.close()


def test_reprice_dry_run_emit_and_idempotent_rerun(env, priced_event_factory, produce_priced, monkeypatch):
    settings, wh, keys = env
    admin = _h(keys["admin"])
    # gpt-4o at genai-prices: $2.5 in, $10 out per MTok -> 1000 in + 200 out = 0.0045 list
    originals = [priced_event_factory(cost="0.001", list_cost="0.0045", step=i, team="payments") for i in range(2)]
    llm = priced_event_factory(cost="7", step=5)
    reservation = llm.model_copy(update={"event": llm.event.model_copy(update={"kind": EventKind.CALL_STARTED})})
    outside = priced_event_factory(cost="0.001", step=6, occurred_at=BASE_TIME + timedelta(days=40))
    produce_priced(settings, [*originals, reservation, outside])
    sink_until_caught_up(settings, wh)
    body = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z", "rate_card": CARD_HALF, "dry_run": True}
    digest = card_hash(parse_rate_card(CARD_HALF))

    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        r = client.post("/v1/reprice", json=body, headers=admin)
        assert r.status_code == 200, r.text
        dry = r.json()
        assert (dry["events_examined"], dry["differences_count"], dry["emitted"], dry["dry_run"]) == (2, 2, 0, True)
        assert dry["total_difference"] == "0.002500000000"
        assert [(d["stored_cost"], d["new_cost"], d["difference"]) for d in dry["differences"]] == [
            ("0.001000000000", "0.002250000000", "0.001250000000")
        ] * 2
        assert _cost_events(settings, timeout=1) == []

        r = client.post("/v1/reprice", json={**body, "dry_run": False}, headers=admin)
        assert r.status_code == 200 and r.json()["emitted"] == 2
        sent = _cost_events(settings)
        want_ids = sorted(adjustment_event_id(o.event.event_id, digest) for o in originals)
        assert [e.event_id for e in sent] == want_ids
        assert all(e.kind is EventKind.ADJUSTMENT and e.adjustment_amount == Decimal("0.00125") for e in sent)
        # a rate card changes what is paid, not the list price: list cost stays where it was
        assert all(e.adjustment_list_amount == 0 for e in sent)
        assert {price_event(e, now=BASE_TIME).list_cost for e in sent} == {Decimal(0)}
        assert {e.tags["adjusts"] for e in sent} == {o.event.event_id for o in originals}
        assert all(e.team == "payments" and e.input_tokens == 0 for e in sent)

        # the pipeline prices the adjustments (as the worker would) and the sink stores them
        produce_priced(settings, [price_event(e, now=BASE_TIME + timedelta(days=50)) for e in sent])
        sink_until_caught_up(settings, wh)
        rerun = client.post("/v1/reprice", json={**body, "dry_run": False}, headers=admin).json()
        assert (rerun["already_applied"], rerun["differences_count"], rerun["emitted"]) == (2, 0, 0)
        assert len(_cost_events(settings)) == 2

        # a second card corrects from what the first left: 0.0036 - 0.00225
        second = client.post("/v1/reprice", json={**body, "rate_card": CARD_80}, headers=admin).json()
        assert [(d["current_cost"], d["difference"]) for d in second["differences"]] == [
            ("0.002250000000", "0.001350000000")
        ] * 2

        # the CLI, through this API
        card = settings.chdb_path.parent / "card.yaml"
        card.write_text(CARD_HALF)
        monkeypatch.setattr(cli, "_api_client", lambda url, key: nullcontext(client))
        client.headers["Authorization"] = f"Bearer {keys['admin']}"
        args = ["--api", "http://testserver", "--admin-key", keys["admin"]]
        cmd = ["reprice", "--from", "2026-03-01", "--to", "2026-04-01", "--rate-card", str(card), "--dry-run"]
        result = CliRunner().invoke(cli.app, [*cmd, *args])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["already_applied"] == 2

        assert client.post("/v1/reprice", json=body, headers=_h(keys["team_admin"])).status_code == 403
        assert client.post("/v1/reprice", json=body, headers=_h(keys["pay"])).status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z", "rate_card": CARD_HALF}, "to"),
        ({"from": "2024-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z", "rate_card": CARD_HALF}, "to"),
        ({"to": "2026-03-01T00:00:00Z", "rate_card": CARD_HALF}, "from"),
        ({"from": "x", "to": "2026-03-01T00:00:00Z", "rate_card": CARD_HALF}, "from"),
        ({"from": "2026-03-01", "to": "2026-03-02", "rate_card": "discounts: [1, 2"}, "rate_card"),
        ({"from": "2026-03-01", "to": "2026-03-02", "rate_card": "discounts:\n  - percent: 300\n"}, "rate_card"),
        ({"from": "2026-03-01", "to": "2026-03-02"}, "rate_card"),
        ({"from": "2026-03-01", "to": "2026-03-02", "rate_card": CARD_HALF, "sql": "1"}, "sql"),
        # found by schemathesis: UTC cannot hold it (was a 500)
        ({"from": "0244-07-14T00:01:15Z", "to": "0001-01-01T00:01:15+01:00", "rate_card": CARD_HALF}, "to"),
    ],
)
def test_reprice_bad_input(settings_factory, warehouse_factory, body, field):
    settings = settings_factory(auth="disabled")
    wh = warehouse_factory(settings)
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        r = client.post("/v1/reprice", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field


def test_price_catalogue_under_the_rate_card(settings_factory, warehouse_factory, tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text(
        "version: nov\nmodels:\n  - model: acme-large\n    provider: acme\n    input_mtok: '1.5'\n"
        "    output_mtok: '6'\ndiscounts:\n  - provider: openai\n    percent: 20\ntool_fees:\n  web_search: '0.01'\n"
    )
    settings = settings_factory(auth="disabled", rate_card=card)
    wh = warehouse_factory(settings)
    with TestClient(create_app(settings, wh, with_sink=False)) as client:
        r = client.get("/v1/prices", params={"provider": "openai", "model": "gpt-4o", "at": "2026-03-01T00:00:00Z"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["price_version"].startswith("genai-prices ")
        assert body["rate_card"]["version"] == "nov" and body["rate_card"]["tool_fees"] == {"web_search": "0.01"}
        [entry] = body["prices"]
        assert (entry["provider"], entry["model"], entry["source"]) == ("openai", "gpt-4o", "genai-prices")
        assert [Decimal(entry[k]) for k in ("input_mtok", "output_mtok", "discount_percent")] == [
            Decimal("2.5"),
            Decimal("10"),
            Decimal("20"),
        ]
        assert [Decimal(entry[k]) for k in ("effective_input_mtok", "effective_output_mtok")] == [
            Decimal("2"),
            Decimal("8"),
        ]
        custom = client.get("/v1/prices", params={"model": "acme-large"}).json()["prices"]
        assert [(p["source"], p["provider"], p["effective_output_mtok"]) for p in custom] == [
            ("rate-card", "acme", "6")
        ]
        listed = client.get("/v1/prices", params={"provider": "anthropic", "limit": 3}).json()["prices"]
        assert len(listed) == 3 and {p["provider"] for p in listed} == {"anthropic"}
        assert client.get("/v1/prices", params={"model": "no-such-model-zz"}).json()["prices"] == []
        for params, field in (({"model": "m" * 200}, "model"), ({"limit": "0"}, "limit"), ({"at": "soon"}, "at")):
            r = client.get("/v1/prices", params=params)
            assert r.status_code == 422 and r.json()["error"]["field"] == field


def test_cli_close_and_reprice_on_the_warehouse(settings_factory, priced_event_factory, produce_priced, monkeypatch):
    settings = settings_factory(sink_batch_seconds=0.2)
    monkeypatch.delenv("CLICKHOUSE_URL", raising=False)
    for name, value in settings.environment(base={}).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        wh = ChdbWarehouse(settings.chdb_path)
        try:
            migrate(wh, settings.database)
            produce_priced(settings, [priced_event_factory(cost="0.001", step=0)])
            sink_until_caught_up(settings, wh)
        finally:
            wh.close()
        card = settings.chdb_path.parent / "half.yaml"
        card.write_text(CARD_HALF)
        runner = CliRunner()
        result = runner.invoke(cli.app, ["periods", "close", "2026-03"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["closed_by"] == "cli"
        assert json.loads(runner.invoke(cli.app, ["periods", "list"]).stdout)["closed"][0]["period"] == "2026-03"
        assert runner.invoke(cli.app, ["periods", "close", "2026-13"]).exit_code == 2
        cmd = ["reprice", "--from", "2026-03-01", "--to", "2026-04-01", "--rate-card", str(card)]
        result = runner.invoke(cli.app, [*cmd, "--dry-run"])
        assert result.exit_code == 0, result.output
        dry = json.loads(result.stdout)
        assert (dry["events_examined"], dry["total_difference"], dry["emitted"]) == (1, "0.001250000000", 0)
        assert _cost_events(settings, timeout=1) == []
        result = runner.invoke(cli.app, cmd)
        assert result.exit_code == 0 and json.loads(result.stdout)["emitted"] == 1
        [adjustment] = _cost_events(settings)
        assert adjustment.adjustment_amount == Decimal("0.00125")
        result = runner.invoke(cli.app, [*cmd[:4], "2026-02-01", *cmd[5:]])  # to before from
        assert result.exit_code == 2 and "'to' must be after 'from'" in result.stderr
    finally:
        get_settings.cache_clear()
