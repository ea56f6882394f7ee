"""Reports over events loaded through the real path (priced-events on Kafka -> Sink -> chDB),
checked against plain-Python Decimal sums over the generated events.

One data set per module (a sink run, then a second run carrying duplicates a day later),
shared by read-only tests; the crash test has its own. The module runs twice: on the embedded
chDB adapter, and on the server adapter (clickhouse-connect over HTTP, through the test front
of tests/api/clickhouse_http.py to the same engine)."""

from __future__ import annotations

import contextlib
import io
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from agentledger.kafka_admin import ensure_topics
from agentledger.settings import Settings
from api.app import create_app
from api.keys import KeyStore
from api.migrations import migrate
from api.queries import rollup_drift_query
from api.reports import focus
from api.sink import Sink
from api.warehouse import Warehouse
from api.warehouse.chdb import ChdbWarehouse
from schemas.events import CostEvent, EventKind, PricedEvent, derive_event_id
from tests.api.conftest import open_served, sink_until_caught_up
from tests.conftest import delete_test_topics

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 30, 22, 0, tzinfo=UTC)
TEAMS = ("payments", "search", None)
PROJECTS = ("checkout", "ranking")
CUSTOMERS = ("acme", "globex", None)
MODELS = (("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4"))
N = 96
Q = Decimal("0.000000000001")


def make_event(i: int, *, priced_at: datetime | None = None) -> PricedEvent:
    """Event i: every 7th a tool call, every 11th a reservation (not spend); 47 minutes apart
    from 2026-03-30 22:00 UTC, so the data crosses days, a week and the March/April boundary."""
    kind = EventKind.LLM_CALL
    if i % 11 == 5:
        kind = EventKind.CALL_STARTED
    elif i % 7 == 3:
        kind = EventKind.TOOL_CALL
    provider, model = MODELS[i % 2]
    workflow = f"wf-{i % 6}"
    fields: dict[str, Any] = {}
    if kind is EventKind.TOOL_CALL:
        fields = {"tool_name": "web_search", "provider": None, "model": None}
    else:
        fields = {"provider": provider, "model": model, "input_tokens": 100 + i, "output_tokens": 3 * i}
        fields["cache_read_tokens"] = i % 5
        fields["reasoning_tokens"] = i % 3
    event = CostEvent(
        event_id=derive_event_id(workflow, i, "step"),
        kind=kind,
        occurred_at=START + timedelta(minutes=47 * i),
        session_id=f"sess-{i % 6}",
        workflow_id=workflow,
        step=i,
        step_name="step",
        agent_type=("pr-reviewer", "support-bot")[i % 2 if i % 4 else 0],
        team=TEAMS[i % 3],
        project=PROJECTS[(i // 3) % 2],
        customer=CUSTOMERS[i % 3 if i % 5 else 0],
        **fields,
    )
    cost = Decimal((i * 982_451_653) % 10**12 + 1) * Q + (i % 4)
    return PricedEvent(
        event=event,
        cost=cost,
        list_cost=cost + Decimal(i) * Decimal("0.000000001"),
        price_source="genai-prices",
        price_version="2026-03-01",
        priced_at=priced_at or START + timedelta(hours=1),
    )


EVENTS = [make_event(i) for i in range(N)]
CHARGED = [e for e in EVENTS if e.event.kind is not EventKind.CALL_STARTED]
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def dim(e: PricedEvent, name: str) -> Any:
    at = e.event.occurred_at
    if name == "day":
        return at.date().isoformat()
    if name == "month":
        return date(at.year, at.month, 1).isoformat()
    if name == "week":
        return (at.date() - timedelta(days=at.weekday())).isoformat()
    if name == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    return getattr(e.event, name)


def expected(dims: tuple[str, ...], events: list[PricedEvent] = CHARGED) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The independent computation: plain Decimal and int sums per group."""
    out: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(
        lambda: {"cost": Decimal(0), "list_cost": Decimal(0), "calls": 0, **dict.fromkeys(TOKENS, 0)}
    )
    for e in events:
        acc = out[tuple(dim(e, d) for d in dims)]
        acc["cost"] += e.cost
        acc["list_cost"] += e.list_cost
        acc["calls"] += 1
        for t in TOKENS:
            acc[t] += getattr(e.event, t)
    return dict(out)


def got(body: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
    dims = body["group_by"]
    out = {}
    for row in body["rows"]:
        key = tuple(row["group"][d] for d in dims)
        assert key not in out
        out[key] = {
            "cost": Decimal(row["cost"]),
            "list_cost": Decimal(row["list_cost"]),
            "calls": row["calls"],
            **{t: row[t] for t in TOKENS},
        }
    return out


class Loaded:
    settings: Settings
    wh: Warehouse
    client: TestClient
    admin: dict[str, str]
    payments: dict[str, str]
    first_run: dict[str, Any]
    late_sink: Sink


def _produce(settings: Settings, items: list[PricedEvent]) -> None:
    from confluent_kafka import Producer

    from schemas import codec
    from schemas.topics import PRICED_EVENTS, topic_name

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    topic = topic_name(settings.topic_prefix, PRICED_EVENTS)
    for item in items:
        producer.produce(topic, codec.encode(item), key=item.event.session_id.encode())
    assert producer.flush(30) == 0


def rollup_sums(wh: Warehouse, database: str) -> dict[str, Any]:
    out = {}
    for table in ("rollup_hourly", "rollup_daily"):
        [row] = wh.query(
            "SELECT sum(cost) AS cost, sum(list_cost) AS list_cost, sum(calls) AS calls, "
            "sum(input_tokens) AS input_tokens, count() AS parts_rows FROM {db:Identifier}.{t:Identifier}",
            {"db": database, "t": table},
        )
        out[table] = {k: row[k] for k in ("cost", "list_cost", "calls", "input_tokens")}
    [ledger] = wh.query("SELECT count() AS n FROM {db:Identifier}.event_ledger", {"db": database})
    out["ledger_rows"] = ledger["n"]
    return out


@pytest.fixture(scope="module", params=["chdb", "clickhouse"])
def loaded(
    request: pytest.FixtureRequest, kafka_broker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Loaded]:
    tag = uuid.uuid4().hex[:10]
    settings = Settings(
        kafka_bootstrap=kafka_broker,
        topic_prefix=f"t{tag}.",
        worker_id=f"worker-{tag}",
        sink_group=f"sink-{tag}",
        database=f"db_{tag}",
        chdb_path=tmp_path_factory.mktemp("reports") / "chdb",
        partitions=3,
        sink_batch_seconds=0.3,
    )
    ensure_topics(settings)
    with contextlib.ExitStack() as stack:  # closed in reverse, also when the set-up fails
        stack.callback(delete_test_topics, settings)
        wh: Warehouse
        if request.param == "chdb":
            wh = ChdbWarehouse(settings.chdb_path)
            stack.callback(wh.close)
        else:
            settings, wh, _front = open_served(stack, settings)
        migrate(wh, settings.database)
        state = Loaded()
        state.settings, state.wh = settings, wh
        # First delivery, with a producer retry inside the same batch (same event_ids again).
        _produce(settings, EVENTS + EVENTS[:10])
        first = sink_until_caught_up(settings, wh)
        assert (first.rows_inserted, first.ledger_rows, first.duplicates_skipped) == (N + 10, N, 10)
        state.first_run = rollup_sums(wh, settings.database)
        # A day later: the same events again (a replayed upstream), new batches at new offsets.
        late = [make_event(i, priced_at=START + timedelta(days=1)) for i in range(0, N, 2)]
        _produce(settings, late)
        state.late_sink = sink_until_caught_up(settings, wh)
        store = KeyStore(wh, settings.database, cache_s=0)
        _, admin_text = store.create(["reports:read"], name="finance")
        _, payments_text = store.create(["reports:read"], team="payments", name="payments")
        state.admin = {"Authorization": f"Bearer {admin_text}"}
        state.payments = {"Authorization": f"Bearer {payments_text}"}
        with TestClient(create_app(settings, wh, with_sink=False)) as client:
            state.client = client
            yield state


def _get(loaded: Loaded, path: str, headers: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
    response = loaded.client.get(path, params=params, headers=headers or loaded.admin)
    assert response.status_code == 200, response.text
    return response.json()


# -- exactness of the rollups ------------------------------------------------------------------


def test_late_duplicates_change_no_rollup_total(loaded):
    after = rollup_sums(loaded.wh, loaded.settings.database)
    assert after == loaded.first_run
    assert after["ledger_rows"] == N
    assert loaded.late_sink.rows_inserted == N // 2  # the raw table took every delivery ...
    assert loaded.late_sink.duplicates_skipped == N // 2  # ... the ledger skipped the late ones
    assert loaded.late_sink.ledger_rows == 0
    want_cost = sum((e.cost for e in CHARGED), Decimal(0))
    for table in ("rollup_hourly", "rollup_daily"):
        assert after[table]["cost"] == want_cost
        assert after[table]["calls"] == len(CHARGED)
    [drift] = loaded.wh.query(*rollup_drift_query(loaded.settings.database))
    assert drift == {
        "hourly_cost_drift": Decimal(0),
        "hourly_calls_drift": 0,
        "daily_cost_drift": Decimal(0),
        "daily_calls_drift": 0,
    }


@pytest.mark.parametrize(
    ("group_by", "params", "source"),
    [
        ("team,project", {}, "rollup_daily"),
        ("team,project", {"from": "2026-03-31T00:00:00Z", "to": "2026-04-02T00:00:00Z"}, "rollup_daily"),
        ("team,model", {"from": "2026-03-31T05:00:00Z", "to": "2026-04-01T07:00:00Z"}, "rollup_hourly"),
        ("team,model", {"from": "2026-03-31T05:30:00Z", "to": "2026-04-01T07:00:00Z"}, "ledger"),
        ("month,team", {}, "rollup_daily"),
        ("week,customer", {}, "rollup_daily"),
        ("day,agent_type,provider,tool_name", {}, "rollup_daily"),
        ("hour", {"from": "2026-03-31T00:00:00Z", "to": "2026-03-31T12:00:00Z"}, "rollup_hourly"),
        ("session_id,team", {}, "ledger"),
        ("", {}, "rollup_daily"),
    ],
)
def test_chargeback_matches_plain_python(loaded, group_by, params, source):
    body = _get(loaded, "/v1/chargeback", group_by=group_by, **params)
    assert body["source"] == source
    dims = tuple(d for d in group_by.split(",") if d)
    start = datetime.fromisoformat(params["from"]) if "from" in params else None
    end = datetime.fromisoformat(params["to"]) if "to" in params else None
    events = [
        e
        for e in CHARGED
        if (start is None or e.event.occurred_at >= start) and (end is None or e.event.occurred_at < end)
    ]
    want = expected(dims, events)
    have = got(body)
    if "hour" in dims:
        have = {(datetime.fromisoformat(k[0]),): v for k, v in have.items()}
    assert have == want
    assert Decimal(body["total"]["cost"]) == sum((e.cost for e in events), Decimal(0))
    assert body["total"]["calls"] == len(events)


def test_filters_and_rollup_agree_with_the_ledger(loaded):
    body = _get(loaded, "/v1/chargeback", group_by="project", team="payments", model="gpt-4o")
    events = [e for e in CHARGED if e.event.team == "payments" and e.event.model == "gpt-4o"]
    assert events and got(body) == expected(("project",), events)
    # The same question at a bound that is not a whole hour reads the ledger: same figures.
    ledger = _get(
        loaded, "/v1/chargeback", group_by="project", team="payments", model="gpt-4o", to="2030-01-01T00:00:01Z"
    )
    assert ledger["source"] == "ledger" and got(ledger) == got(body)
    none = _get(loaded, "/v1/chargeback", group_by="team", team="x' OR 1=1 --")
    assert none["rows"] == [] and none["total"]["cost"] == "0.000000000000"


# -- shared cost ---------------------------------------------------------------------------------


def _split(total: Decimal, weights: list[Decimal], quantum: Decimal) -> list[Decimal]:
    """Largest remainder, written again here from its definition for the check."""
    units = int(total / quantum)
    wsum = sum(weights)
    exact = [Decimal(units) * w / wsum for w in weights]
    floors = [int(x) for x in exact]
    rest = units - sum(floors)
    for i in sorted(range(len(weights)), key=lambda i: (-(exact[i] - floors[i]), i))[:rest]:
        floors[i] += 1
    return [Decimal(f) * quantum for f in floors]


def test_unallocated_reported_then_distributed_exactly(loaded):
    report = _get(loaded, "/v1/chargeback", group_by="team", unallocated="report")
    rows = {r["group"]["team"]: r for r in report["rows"]}
    assert rows[None]["allocation"] == "unallocated" and rows["payments"]["allocation"] == "direct"
    want = expected(("team",))
    unalloc = want[(None,)]["cost"]
    assert Decimal(rows[None]["cost"]) == unalloc
    total = sum((e.cost for e in CHARGED), Decimal(0))

    for mode in ("proportional", "even"):
        body = _get(loaded, "/v1/chargeback", group_by="team", unallocated=mode)
        by_team = {r["group"]["team"]: r for r in body["rows"]}
        assert set(by_team) == {"payments", "search"}
        direct = [want[("payments",)]["cost"], want[("search",)]["cost"]]
        weights = direct if mode == "proportional" else [Decimal(1), Decimal(1)]
        parts = _split(unalloc, weights, Q)
        for team, d, part in zip(("payments", "search"), direct, parts, strict=True):
            assert Decimal(by_team[team]["allocated_cost"]) == part
            assert Decimal(by_team[team]["cost"]) == d + part
        assert sum(Decimal(r["cost"]) for r in body["rows"]) == total
        assert Decimal(body["total"]["cost"]) == total
        assert body["total"]["calls"] == len(CHARGED)
        assert sum(r["input_tokens"] for r in body["rows"]) == sum(e.event.input_tokens for e in CHARGED)

    # by another dimension, beside a time grain: each day's unallocated customer cost stays in that day
    body = _get(loaded, "/v1/chargeback", group_by="day,customer", unallocated="even", allocate_by="customer")
    per_day: dict[str, Decimal] = defaultdict(Decimal)
    for r in body["rows"]:
        assert r["group"]["customer"] is not None
        per_day[r["group"]["day"]] += Decimal(r["cost"])
    assert dict(per_day) == {k[0]: v["cost"] for k, v in expected(("day",)).items()}

    bad = loaded.client.get(
        "/v1/chargeback", params={"group_by": "project", "unallocated": "even"}, headers=loaded.admin
    )
    assert (bad.status_code, bad.json()["error"]["field"]) == (422, "allocate_by")


# -- formats ---------------------------------------------------------------------------------------


def test_csv_and_parquet_carry_exact_decimals(loaded):
    want = expected(("team", "project"))
    response = loaded.client.get(
        "/v1/chargeback", params={"group_by": "team,project"}, headers={**loaded.admin, "Accept": "text/csv"}
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    lines = response.text.strip().split("\r\n")
    assert lines[0] == (
        "team,project,cost,list_cost,allocation,input_tokens,output_tokens,cache_read_tokens,"
        "cache_write_tokens,reasoning_tokens,calls"
    )
    first = lines[1].split(",")
    assert (first[0], first[1]) == ("payments", "checkout")
    assert Decimal(first[2]) == want[("payments", "checkout")]["cost"]
    assert len(first[2].split(".")[1]) == 12

    response = loaded.client.get(
        "/v1/chargeback", params={"group_by": "team,project", "format": "parquet"}, headers=loaded.admin
    )
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(response.content))
    assert table.schema.field("cost").type == pa.decimal128(38, 12)
    assert table.schema.field("list_cost").type == pa.decimal128(38, 12)
    rows = table.to_pylist()
    assert {(r["team"], r["project"]): r["cost"] for r in rows} == {k: v["cost"] for k, v in want.items()}
    assert {(r["team"], r["project"]): r["calls"] for r in rows} == {k: v["calls"] for k, v in want.items()}


def _check_focus(table: pa.Table) -> None:
    """The export against the FOCUS 1.2 column list: presence, types, nullability."""
    names = set(table.schema.names)
    for column in focus.FOCUS_1_2_COLUMNS:
        assert column.name in names, column.name
        type_ = table.schema.field(column.name).type
        if column.type == "Decimal":
            assert type_ == pa.decimal128(38, 12), column.name
        elif column.type == "DateTime":
            assert pa.types.is_timestamp(type_) and type_.tz == "UTC", column.name
        else:
            assert pa.types.is_string(type_), column.name
        if column.level == "Mandatory" and not column.nullable:
            assert table.column(column.name).null_count == 0, column.name
    for name in names - {c.name for c in focus.FOCUS_1_2_COLUMNS}:
        assert name.startswith("x_"), name
    assert set(table.column("ChargeCategory").to_pylist()) <= focus.CHARGE_CATEGORIES
    assert set(table.column("ServiceCategory").to_pylist()) == {"AI and Machine Learning"}
    for tags in table.column("Tags").to_pylist():
        assert isinstance(orjson.loads(tags), dict)


def test_focus_parquet_and_csv_validate_against_the_spec_list(loaded):
    assert len(focus.FOCUS_1_2_COLUMNS) == len({c.name for c in focus.FOCUS_1_2_COLUMNS}) == 57
    mandatory = {c.name for c in focus.FOCUS_1_2_COLUMNS if c.level == "Mandatory"}
    assert mandatory >= {
        "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
        "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
        "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
        "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
    }  # fmt: skip
    response = loaded.client.get("/v1/chargeback", params={"format": "focus_parquet"}, headers=loaded.admin)
    assert response.status_code == 200
    table = pq.read_table(io.BytesIO(response.content))
    _check_focus(table)
    rows = table.to_pylist()
    assert sum(r["BilledCost"] for r in rows) == sum((e.cost for e in CHARGED), Decimal(0))
    assert sum(r["ListCost"] for r in rows) == sum((e.list_cost for e in CHARGED), Decimal(0))
    assert sum(r["x_Calls"] for r in rows) == len(CHARGED)
    assert sum(r["x_InputTokens"] for r in rows) == sum(e.event.input_tokens for e in CHARGED)
    april = [r for r in rows if r["ChargePeriodStart"] == datetime(2026, 4, 1, tzinfo=UTC)]
    assert april and all(
        (r["BillingPeriodStart"], r["BillingPeriodEnd"])
        == (datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))
        for r in april
    )
    tool = [r for r in rows if r["x_ToolName"] == "web_search"]
    assert tool and all(r["PricingUnit"] == "Requests" and r["x_Model"] is None for r in tool)

    csv = loaded.client.get(
        "/v1/chargeback", params={"format": "focus", "group_by": "session_id"}, headers=loaded.admin
    )
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    header = csv.text.split("\r\n")[0].split(",")
    assert header == list(focus.COLUMNS)
    from pyarrow import csv as pacsv

    parsed = pacsv.read_csv(io.BytesIO(csv.content))
    assert set(parsed.column("x_SessionId").to_pylist()) == {f"sess-{i}" for i in range(6)}
    assert parsed.num_rows >= table.num_rows
    assert sum(Decimal(str(v)) for v in parsed.column("x_Calls").to_pylist()) == len(CHARGED)


def test_focus_distributes_shared_cost_like_the_report(loaded):
    total = sum((e.cost for e in CHARGED), Decimal(0))
    unalloc = expected(("team",))[(None,)]["cost"]
    assert unalloc > 0  # the data has cost without a team
    response = loaded.client.get(
        "/v1/chargeback", params={"format": "focus_parquet", "unallocated": "proportional"}, headers=loaded.admin
    )
    assert response.status_code == 200
    table = pq.read_table(io.BytesIO(response.content))
    _check_focus(table)
    rows = table.to_pylist()
    assert all(r["x_Team"] is not None and r["SubAccountId"] == r["x_Team"] for r in rows)
    assert {r["x_Allocation"] for r in rows} == {"direct"}
    assert sum(r["BilledCost"] for r in rows) == total
    assert sum(r["x_AllocatedCost"] for r in rows) == unalloc
    assert sum(r["x_Calls"] for r in rows) == len(CHARGED)
    # per team, the same parts as the JSON report's distribution
    report = _get(loaded, "/v1/chargeback", group_by="team", unallocated="proportional")
    by_team: dict[str, Decimal] = defaultdict(Decimal)
    for r in rows:
        by_team[r["x_Team"]] += r["BilledCost"]
    assert {t: Decimal(r["cost"]) for t, r in ((r["group"]["team"], r) for r in report["rows"])} == by_team


# -- the other reports -------------------------------------------------------------------------


def test_top_sessions_spend_by_model_daily_trend(loaded):
    body = _get(loaded, "/v1/reports/top-sessions", limit=3)
    per_session = {k[0]: v["cost"] for k, v in expected(("session_id",)).items()}
    top = sorted(per_session.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert [(r["group"]["session_id"], Decimal(r["cost"])) for r in body["rows"]] == top

    body = _get(loaded, "/v1/reports/spend-by-model")
    assert got(body) == expected(("provider", "model"))
    body = _get(loaded, "/v1/reports/daily-trend", **{"from": "2026-03-31T00:00:00Z"})
    after = [e for e in CHARGED if e.event.occurred_at >= datetime(2026, 3, 31, tzinfo=UTC)]
    assert body["source"] == "rollup_daily" and got(body) == expected(("day",), after)


def test_session_detail_lists_its_events(loaded):
    body = _get(loaded, "/v1/reports/sessions/sess-3")
    mine = [e for e in EVENTS if e.event.session_id == "sess-3"]
    assert [e["event_id"] for e in body["events"]] == [e.event.event_id for e in mine]
    assert {e["kind"] for e in body["events"]} >= {"llm_call", "call_started"}
    charged = [e for e in mine if e.event.kind is not EventKind.CALL_STARTED]
    assert Decimal(body["total"]["cost"]) == sum((e.cost for e in charged), Decimal(0))
    assert body["total"]["calls"] == len(charged)
    missing = loaded.client.get("/v1/reports/sessions/sess-none", headers=loaded.admin)
    assert missing.status_code == 404


# -- team isolation --------------------------------------------------------------------------------


def test_team_key_reads_its_team_only_on_every_endpoint(loaded):
    mine = [e for e in CHARGED if e.event.team == "payments"]
    h = loaded.payments
    body = _get(loaded, "/v1/chargeback", h, group_by="team,project")
    assert got(body) == expected(("team", "project"), mine)
    body = _get(loaded, "/v1/chargeback", h, group_by="team", unallocated="proportional")
    assert [(r["group"]["team"], Decimal(r["cost"])) for r in body["rows"]] == [
        ("payments", sum((e.cost for e in mine), Decimal(0)))
    ]
    assert got(_get(loaded, "/v1/chargeback", h, group_by="session_id")) == expected(("session_id",), mine)
    assert got(_get(loaded, "/v1/reports/spend-by-model", h)) == expected(("provider", "model"), mine)
    assert got(_get(loaded, "/v1/reports/daily-trend", h)) == expected(("day",), mine)
    top = _get(loaded, "/v1/reports/top-sessions", h, limit=100)
    assert got(top) == expected(("session_id",), mine)

    response = loaded.client.get("/v1/chargeback", params={"format": "focus_parquet"}, headers=h)
    rows = pq.read_table(io.BytesIO(response.content)).to_pylist()
    assert {r["SubAccountId"] for r in rows} == {"payments"}
    assert sum(r["BilledCost"] for r in rows) == sum((e.cost for e in mine), Decimal(0))
    csv = loaded.client.get("/v1/chargeback", params={"format": "csv", "group_by": "team"}, headers=h)
    assert [line.split(",")[0] for line in csv.text.strip().split("\r\n")[1:]] == ["payments"]

    # another team's data: 403 when asked by name, 404 for its sessions (sess-1 is search's only)
    for path, params in [
        ("/v1/chargeback", {"team": "search"}),
        ("/v1/reports/top-sessions", {"team": "search"}),
        ("/v1/reports/spend-by-model", {"team": "search"}),
        ("/v1/reports/daily-trend", {"team": "search"}),
    ]:
        response = loaded.client.get(path, params=params, headers=h)
        assert response.status_code == 403, path
    assert {e.event.team for e in EVENTS if e.event.session_id == "sess-1"} == {"search"}
    assert loaded.client.get("/v1/reports/sessions/sess-1", headers=h).status_code == 404
    shared = _get(loaded, "/v1/reports/sessions/sess-0", h)
    assert {e["team"] for e in shared["events"]} == {"payments"}
    for path in ("/v1/chargeback", "/v1/reports/top-sessions", "/v1/reports/sessions/sess-0"):
        assert loaded.client.get(path).status_code == 401


# -- bad input -------------------------------------------------------------------------------------

INJECTION: list[tuple[str, dict[str, str]]] = [
    ("/v1/chargeback", {"group_by": "team'--"}),
    ("/v1/chargeback", {"group_by": "team; DROP TABLE priced_events"}),
    ("/v1/chargeback", {"group_by": "`team`"}),
    ("/v1/chargeback", {"group_by": "team OR 1=1"}),
    ("/v1/chargeback", {"group_by": "tags['team']"}),
    ("/v1/chargeback", {"group_by": "JSONExtractString(tags, 'x')"}),
    ("/v1/chargeback", {"group_by": "team/*x*/"}),
    ("/v1/chargeback", {"group_by": "cost"}),
    ("/v1/chargeback", {"group_by": "équipe"}),
    ("/v1/chargeback", {"group_by": "team," * 200}),
    ("/v1/chargeback", {"team": "x" * 129}),
    ("/v1/chargeback", {"team": "paymentš"}),
    ("/v1/chargeback", {"team": "pay\x00ments"}),
    ("/v1/chargeback", {"team": "pay\nments"}),
    ("/v1/chargeback", {"team": ""}),
    ("/v1/chargeback", {"filter": "team:payments"}),
    ("/v1/chargeback", {"$.team": "payments"}),
    ("/v1/chargeback", {"team'": "x"}),
    ("/v1/chargeback", {"tags.team": "payments"}),
    ("/v1/chargeback", {"from": "2026-03-01' OR 1=1 --"}),
    ("/v1/chargeback", {"to": "now()"}),
    ("/v1/chargeback", {"to": "0001-01-01T00:00:00+01:00"}),  # UTC cannot hold it
    ("/v1/chargeback", {"from": "9999-12-31T23:59:59-01:00"}),
    ("/v1/reports/top-sessions", {"from": "0001-01-01T00:30:00+01:00"}),
    ("/v1/chargeback", {"format": "xml"}),
    ("/v1/chargeback", {"format": "json' --"}),
    ("/v1/chargeback", {"unallocated": "all"}),
    ("/v1/chargeback", {"allocate_by": "model", "group_by": "model", "unallocated": "even"}),
    ("/v1/reports/top-sessions", {"limit": "-1"}),
    ("/v1/reports/top-sessions", {"limit": "10000000000"}),
    ("/v1/reports/top-sessions", {"limit": "1 OR 1=1"}),
    ("/v1/reports/top-sessions", {"group_by": "team"}),
    ("/v1/reports/daily-trend", {"session_id": "ß"}),
    ("/v1/reports/spend-by-model", {"model": "'" * 200}),
]
# Legitimate filter values that match nothing: 200 and no rows, never more.
HARMLESS: list[tuple[str, dict[str, str]]] = [
    ("/v1/chargeback", {"team": "x' OR 1=1 --"}),
    ("/v1/chargeback", {"project": "checkout' OR '1'='1"}),
    ("/v1/chargeback", {"model": "gpt-4o`; DROP TABLE x; --"}),
    ("/v1/chargeback", {"session_id": "sess-0' /*", "group_by": "session_id"}),
    ("/v1/reports/spend-by-model", {"customer": "\\' OR 1=1"}),
    ("/v1/reports/top-sessions", {"agent_type": "$.agent_type"}),
]


def test_injection_corpus_is_refused_or_bound(loaded):
    for path, params in INJECTION:
        response = loaded.client.get(path, params=params, headers=loaded.admin)
        assert 400 <= response.status_code < 500, (path, params, response.status_code, response.text)
        assert response.json()["error"]["code"] in {"invalid_parameter", "forbidden"}
    repeated = loaded.client.get("/v1/chargeback?team=payments&team=search", headers=loaded.admin)
    assert repeated.status_code == 422
    for path, params in HARMLESS:
        response = loaded.client.get(path, params=params, headers=loaded.admin)
        assert response.status_code == 200, (path, params, response.text)
        assert response.json()["rows"] == [], (path, params)
    for bad in ("x' OR '1'='1", "sess-0%27--", "..%2F..%2Fetc"):
        response = loaded.client.get(f"/v1/reports/sessions/{bad}", headers=loaded.admin)
        assert response.status_code in (404, 422), bad
    response = loaded.client.get("/v1/reports/sessions/" + "é", headers=loaded.admin)
    assert response.status_code == 422
