"""The dashboard against a running API (uvicorn on a free port, the sinks in its process) on
data loaded through the real path: priced events, signals, session statuses, alerts and
deliveries on Kafka -> sinks -> chDB; budget policies PUT through the API onto their topic.
Driven by Debian's Chromium through Playwright (never `playwright install`: no CDN here).

One data set for the package, dated relative to now, so "this month" is never empty; screenshots
go to $AGENTLEDGER_TEST_ARTIFACTS/dashboard (default: the system temp folder)."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from confluent_kafka import Producer

from agentledger.kafka_admin import ensure_topics
from agentledger.settings import Settings
from api.app import create_app
from api.keys import KeyStore
from api.migrations import migrate
from api.warehouse.chdb import ChdbWarehouse
from schemas.budgets import Action, Alert, Scope, SessionState, SessionStatus, Signal, TopSession
from schemas.codec import encode
from schemas.deliveries import AlertDelivery
from schemas.events import CostEvent, EventKind, PricedEvent, derive_event_id
from schemas.topics import ALERT_DELIVERIES, ALERTS, PRICED_EVENTS, SESSION_STATUS, SIGNALS, topic_name
from tests.api.conftest import wait_caught_up
from tests.api.test_admin_sessions import wait_status_caught_up
from tests.conftest import delete_test_topics

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
Q = Decimal("0.000000000001")
TEAMS = ("payments", "search", "support", None)
PROJECTS = ("checkout", "ranking", "helpdesk", "billing")
CUSTOMERS = ("acme", "globex", "initech", None)
AGENT_TYPES = ("pr-reviewer", "support-bot", "researcher")
MODELS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4"))
RUNAWAY = "search-runaway-1"


def artifacts_dir() -> Path:
    base = os.environ.get("AGENTLEDGER_TEST_ARTIFACTS") or str(
        Path(tempfile.gettempdir()) / "agentledger-test-artifacts"
    )
    path = Path(base) / "dashboard"
    path.mkdir(parents=True, exist_ok=True)
    return path


def month_start(at: datetime, back: int = 0) -> datetime:
    month = at.year * 12 + at.month - 1 - back
    return datetime(month // 12, month % 12 + 1, 1, tzinfo=UTC)


def make_event(i: int, at: datetime) -> PricedEvent:
    """Event i at `at`: every 9th a tool call, every 37th unpriced, every 53rd late; payments
    spends most. Costs have all 12 decimal places, so a rounding slip shows."""
    team = TEAMS[i % 4] if i % 5 else "payments"
    agent_type = AGENT_TYPES[i % 3]
    provider, model = MODELS[(i // 2) % 3]
    session = f"{team or 'shared'}-{agent_type}-{i % 7}"
    fields: dict[str, Any]
    if i % 9 == 4:
        kind, fields = EventKind.TOOL_CALL, {"tool_name": "web_search"}
    else:
        kind = EventKind.LLM_CALL
        fields = {
            "provider": provider,
            "model": model,
            "input_tokens": 800 + 13 * i,
            "output_tokens": 120 + 7 * (i % 40),
        }
        fields["cache_read_tokens"] = 50 * (i % 4)
    event = CostEvent(
        event_id=derive_event_id(f"wf-{session}", i, "step"),
        kind=kind,
        occurred_at=at,
        session_id=session,
        workflow_id=f"wf-{session}",
        step=i,
        step_name="step",
        agent_type=agent_type,
        team=team,
        project=PROJECTS[(i // 3) % 4],
        customer=CUSTOMERS[i % 4 if i % 6 else 0],
        **fields,
    )
    weight = 4 if team == "payments" else 1
    cost = Decimal(weight * (i % 17 + 1)) * Decimal("0.0137") + Decimal((i * 982_451_653) % 10**10 + 1) * Q
    return PricedEvent(
        event=event,
        cost=cost,
        list_cost=(cost * Decimal("1.25")).quantize(Q),
        price_source="genai-prices",
        price_version="2026-11-01",
        priced_at=at + timedelta(seconds=1),
        unpriced=i % 37 == 3,
        late=i % 53 == 7,
    )


def build_events(now: datetime) -> list[PricedEvent]:
    """200 events last month and 400 this month, spread evenly up to a minute before `now`."""
    this, last = month_start(now), month_start(now, 1)
    out = []
    span = (now - timedelta(minutes=1)) - this
    for i in range(400):
        out.append(make_event(i, this + span * i / 400))
    for i in range(400, 600):
        out.append(make_event(i, last + (this - last) * (i - 400) / 200))
    return out


def runaway_events(now: datetime) -> list[PricedEvent]:
    """A search researcher session that a budget killed: 12 calls in the last hour."""
    out = []
    for i in range(12):
        at = now - timedelta(minutes=50) + timedelta(minutes=4 * i)
        event = CostEvent(
            event_id=derive_event_id("wf-runaway", i, "llm"),
            kind=EventKind.LLM_CALL,
            occurred_at=at,
            session_id=RUNAWAY,
            workflow_id="wf-runaway",
            step=i,
            step_name="llm",
            agent_type="researcher",
            team="search",
            project="ranking",
            customer="globex",
            provider="openai",
            model="gpt-4o",
            input_tokens=9000 + 500 * i,
            output_tokens=1500,
        )
        cost = Decimal("0.0375") + Decimal("0.00125") * i + Decimal(i + 1) * Q
        out.append(
            PricedEvent(
                event=event,
                cost=cost,
                list_cost=cost,
                price_source="genai-prices",
                price_version="2026-11-01",
                priced_at=at + timedelta(seconds=1),
            )
        )
    return out


POLICIES: tuple[dict[str, Any], ...] = (
    {"policy_id": "payments-monthly", "name": "Payments monthly", "scope": ["team"], "match": {"team": "payments"},
     "limit_cost": "150", "window": "calendar_month", "action": "warn", "thresholds": ["0.5", "0.8", "1"]},
    {"policy_id": "search-agents-7d", "name": "Search agents, 7 days", "scope": ["team", "agent_type"],
     "match": {"team": "search"}, "limit_cost": "2.5", "window": "rolling_7d", "action": "kill",
     "escalation": {"warn": "0.5", "downgrade": "0.8"}, "downgrade_to": {"gpt-4o": "gpt-4o-mini"}},
    {"policy_id": "session-tokens", "name": "Session token cap", "scope": ["session"], "limit_tokens": 150000,
     "window": "lifetime", "action": "kill", "thresholds": ["0.8", "1"]},
)  # fmt: skip


def status_records(now: datetime) -> dict[Any, list[tuple[str, Any]]]:
    kill = Signal(
        signal_id="sig-runaway-kill",
        session_id=RUNAWAY,
        action=Action.KILL,
        policy_id="search-agents-7d",
        scope=(Scope.TEAM, Scope.AGENT_TYPE),
        scope_value="team=search|agent_type=researcher",
        limit_cost=Decimal("2.5"),
        spent_tokens=180_000,
        spent_cost=Decimal("2.512500000012"),
        reason="budget search-agents-7d (team=search|agent_type=researcher, rolling_7d) reached: cost 2.5125 of 2.5",
        trigger_event_id=derive_event_id("wf-runaway", 11, "llm"),
        issued_at=now - timedelta(minutes=5),
    )
    warn = kill.model_copy(
        update={
            "signal_id": "sig-runaway-warn",
            "action": Action.WARN,
            "issued_at": now - timedelta(minutes=30),
            "spent_cost": Decimal("1.3"),
            "reason": "budget search-agents-7d at 50%: warn",
        }
    )
    alerts = [
        Alert(
            alert_id="alert-pay-50",
            policy_id="payments-monthly",
            scope=(Scope.TEAM,),
            scope_value="team=payments",
            window_start=month_start(now),
            threshold=Decimal("0.5"),
            spent_cost=Decimal("60.000000000001"),
            spent_tokens=400_000,
            limit_cost=Decimal("150"),
            top_sessions=(TopSession(session_id="payments-pr-reviewer-0", spent_cost=Decimal("6"), spent_tokens=9000),),
            issued_at=now - timedelta(hours=3),
        ),
        Alert(
            alert_id="alert-search-100",
            policy_id="search-agents-7d",
            scope=(Scope.TEAM, Scope.AGENT_TYPE),
            scope_value="team=search|agent_type=researcher",
            threshold=Decimal("1"),
            spent_cost=Decimal("2.5125"),
            spent_tokens=180_000,
            limit_cost=Decimal("2.5"),
            issued_at=now - timedelta(minutes=5),
        ),
    ]
    delivery = AlertDelivery(
        alert_id="alert-pay-50",
        policy_id="payments-monthly",
        destination="ops#0123456789ab",
        format="slack",
        attempt=1,
        attempted_at=now - timedelta(hours=3),
        ok=True,
        final=True,
        status_code=200,
        latency_ms=42.0,
    )
    failed = delivery.model_copy(
        update={
            "alert_id": "alert-search-100",
            "policy_id": "search-agents-7d",
            "ok": False,
            "final": False,
            "status_code": 503,
            "error": "HTTP 503",
            "attempted_at": now - timedelta(minutes=4),
        }
    )
    return {
        SIGNALS: [(RUNAWAY, warn), (RUNAWAY, kill)],
        SESSION_STATUS: [
            (RUNAWAY, SessionStatus(session_id=RUNAWAY, state=SessionState.WARNED, signal=warn, updated_at=warn.issued_at)),
            (RUNAWAY, SessionStatus(session_id=RUNAWAY, state=SessionState.KILLED, signal=kill, updated_at=kill.issued_at)),
        ],
        ALERTS: [(a.policy_id, a) for a in alerts],
        ALERT_DELIVERIES: [(delivery.alert_id, delivery), (failed.alert_id, failed)],
    }  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _produce(settings: Settings, items: dict[Any, list[tuple[str, Any]]]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    for spec, records in items.items():
        for key, model in records:
            producer.produce(topic_name(settings.topic_prefix, spec), encode(model), key=key.encode())
    assert producer.flush(30) == 0


@dataclass
class Dashboard:
    base_url: str
    settings: Settings
    keys: dict[str, str]
    events: list[PricedEvent]
    now: datetime
    artifacts: Path
    http: httpx.Client = field(repr=False)
    warehouse: ChdbWarehouse | None = field(default=None, repr=False)

    def get(self, path: str, key: str = "admin", **params: Any) -> Any:
        r = self.http.get(path, params=params, headers={"Authorization": f"Bearer {self.keys[key]}"})
        assert r.status_code == 200, r.text
        return r.json()


class ServerThread:
    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, name="dashboard-uvicorn", daemon=True)

    def start(self, base_url: str) -> None:
        self.thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.thread.is_alive(), "the API server thread died at start-up"
            time.sleep(0.2)
        raise AssertionError("the API did not become ready within 120 s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(90)


@pytest.fixture(scope="package")
def dashboard(kafka_broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    tag = uuid.uuid4().hex[:10]
    port = free_port()
    settings = Settings(
        kafka_bootstrap=kafka_broker,
        topic_prefix=f"t{tag}.",
        worker_id=f"worker-{tag}",
        sink_group=f"sink-{tag}",
        database=f"db_{tag}",
        chdb_path=tmp_path_factory.mktemp("dashboard") / "chdb",
        partitions=3,
        sink_batch_seconds=0.2,
        api_port=port,
    )
    ensure_topics(settings)
    wh = ChdbWarehouse(settings.chdb_path)
    migrate(wh, settings.database)
    store = KeyStore(wh, settings.database, cache_s=0)
    keys = {
        "admin": store.create(["admin"], name="platform admin")[1],
        "finance": store.create(["reports:read"], name="finance")[1],
        "payments": store.create(["reports:read", "budgets:write"], team="payments", name="payments lead")[1],
    }
    now = datetime.now(UTC).replace(microsecond=0)
    # In a month's first minutes "this month" would hold no event yet: date them a little ahead.
    now = max(now, month_start(now) + timedelta(minutes=10))
    events = build_events(now) + runaway_events(now)
    server = ServerThread(create_app(settings, wh, with_sink=True), port)
    base_url = f"http://127.0.0.1:{port}"
    server.start(base_url)
    try:
        _produce(settings, {PRICED_EVENTS: [(e.event.session_id, e) for e in events]})
        _produce(settings, status_records(now))
        wait_caught_up(settings, timeout=120)
        wait_status_caught_up(settings, timeout=120)
        with httpx.Client(base_url=base_url, timeout=60) as http:
            admin = {"Authorization": f"Bearer {keys['admin']}"}
            for policy in POLICIES:
                r = http.put(f"/v1/budgets/{policy['policy_id']}", json=policy, headers=admin)
                assert r.status_code in (200, 201), r.text
            yield Dashboard(base_url, settings, keys, events, now, artifacts_dir(), http, wh)
    finally:
        server.stop()
        wh.close()
        delete_test_topics(settings)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless. Missing is a failure, never a skip: CI must run these."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `bash scripts/setup.sh` (installs Debian's chromium) or "
            "`apt-get install -y chromium chromium-driver`"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="agentledger-chromium-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, accept_downloads=True
        )
        yield context
        context.close()
