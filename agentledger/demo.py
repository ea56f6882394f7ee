"""A small simulated fleet of agents, driven through the real SDK hook.

Well-behaved sessions of several teams make LLM and tool calls; one runaway session loops
until its per-session token budget kills it. Then the chargeback table is read back from
the API, as finance would.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

import ingest
from agentledger.settings import Settings
from processors.policies import publish_policy
from schemas.budgets import Action, BudgetPolicy, Scope, Window

RUNAWAY_TOKEN_CAP = 50_000


@dataclass(frozen=True, slots=True)
class Profile:
    agent_type: str
    team: str
    project: str
    customer: str
    provider: str
    model: str


FLEET = (
    Profile("pr-reviewer", "platform", "code-review", "internal", "openai", "gpt-4o-mini"),
    Profile("support-bot", "support", "helpdesk", "acme", "anthropic", "claude-haiku-4-5"),
    Profile("researcher", "search", "deep-research", "globex", "openai", "gpt-4.1"),
    Profile("support-bot", "support", "helpdesk", "initech", "anthropic", "claude-sonnet-4-5"),
)


@dataclass(slots=True)
class Tally:
    llm_calls: int = 0
    tool_calls: int = 0
    tokens: int = 0

    def add(self, other: Tally) -> None:
        self.llm_calls += other.llm_calls
        self.tool_calls += other.tool_calls
        self.tokens += other.tokens


def _well_behaved(session_id: str, profile: Profile, calls: int, rng: random.Random) -> Tally:
    tally = Tally()
    with ingest.session(
        session_id=session_id,
        agent_type=profile.agent_type,
        team=profile.team,
        project=profile.project,
        customer=profile.customer,
        tags={"source": "demo"},
    ) as session:
        for _ in range(calls):
            tokens_in, tokens_out = rng.randint(400, 4000), rng.randint(50, 800)
            session.record_llm_call(
                provider=profile.provider,
                model=profile.model,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                latency_ms=rng.randint(200, 3000),
            )
            tally.llm_calls += 1
            tally.tokens += tokens_in + tokens_out
            if rng.random() < 0.5:
                session.record_tool_call(
                    tool_name=rng.choice(["search", "fetch_file", "sql"]), duration_ms=rng.randint(5, 900)
                )
                tally.tool_calls += 1
            time.sleep(rng.uniform(0.01, 0.05))
    return tally


def _runaway(session_id: str, console: Console) -> tuple[Tally, ingest.BudgetExceeded | None]:
    tally = Tally()
    with ingest.session(
        session_id=session_id, agent_type="researcher", team="search", project="deep-research", customer="globex"
    ) as session:
        for _ in range(500):
            try:
                session.record_llm_call(provider="openai", model="gpt-4.1", input_tokens=6000, output_tokens=1500)
            except ingest.BudgetExceeded as stop:
                return tally, stop
            tally.llm_calls += 1
            tally.tokens += 7500
            time.sleep(0.05)
    return tally, None


def _tokens(totals: dict[str, Any]) -> int:
    return sum(int(totals[t]) for t in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))


def _chargeback(base: str, since: datetime, expected_calls: int, timeout: float = 60.0) -> dict[str, Any]:
    """The chargeback of this demo run, once the sink has stored every event of it."""
    deadline = time.monotonic() + timeout
    params = {"group_by": "team,project", "from": since.isoformat()}
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{base}/v1/chargeback", params=params, timeout=10).json()
        if int(body["total"]["calls"]) >= expected_calls:
            break
        time.sleep(0.5)
    return body


def _render(body: dict[str, Any], console: Console) -> None:
    table = Table(title="Chargeback by team and project (from ClickHouse, via GET /v1/chargeback)")
    for column in ("team", "project", "calls", "tokens", "cost (USD)"):
        table.add_column(column, justify="right" if column in ("calls", "tokens", "cost (USD)") else "left")
    for row in body["rows"]:
        group = row["group"]
        table.add_row(str(group["team"]), str(group["project"]), str(row["calls"]), f"{_tokens(row):,}", row["cost"])
    total = body["total"]
    table.add_section()
    table.add_row("total", "", str(total["calls"]), f"{_tokens(total):,}", total["cost"])
    console.print(table)


def run_demo(settings: Settings, *, sessions: int = 12, calls: int = 8, console: Console | None = None) -> None:
    console = console or Console()
    run = uuid.uuid4().hex[:6]
    since = datetime.now(UTC) - timedelta(seconds=5)
    console.rule("Demo fleet")
    policy = BudgetPolicy(
        policy_id=f"demo-runaway-cap-{run}",
        name="runaway sessions: kill at 50k tokens",
        scope=(Scope.SESSION,),
        match={Scope.SESSION: f"runaway-{run}"},
        limit_tokens=RUNAWAY_TOKEN_CAP,
        window=Window.LIFETIME,
        action=Action.KILL,
    )
    publish_policy(settings, policy)
    console.print(f"budget policy {policy.policy_id}: session runaway-{run} killed at {RUNAWAY_TOKEN_CAP:,} tokens")
    time.sleep(1.0)  # policies are read by the worker from a compacted topic; give it a moment
    ingest.configure(
        bootstrap_servers=settings.kafka_bootstrap, topic_prefix=settings.topic_prefix, spool_dir="var/spool"
    )
    rng = random.Random(7)
    results: list[Tally] = []
    lock = threading.Lock()

    def agent(index: int) -> None:
        tally = _well_behaved(f"demo-{run}-{index:03d}", FLEET[index % len(FLEET)], calls, random.Random(rng.random()))
        with lock:
            results.append(tally)

    threads = [threading.Thread(target=agent, args=(i,), name=f"agent-{i}") for i in range(sessions)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    runaway, stop = _runaway(f"runaway-{run}", console)
    for thread in threads:
        thread.join()
    ingest.flush(timeout=30)
    ingest.close(timeout=5)  # the demo's agents are done: nothing of the hook outlives them
    total = Tally()
    for tally in results:
        total.add(tally)
    console.print(
        f"{sessions} sessions recorded {total.llm_calls} LLM calls and {total.tool_calls} tool calls "
        f"({total.tokens:,} tokens) in {time.monotonic() - started:.1f}s"
    )
    if stop is None:
        console.print("[red]the runaway session was never stopped: is the worker running?[/]")
    else:
        console.print(
            f"[bold red]runaway-{run} stopped by BudgetExceeded[/] after {runaway.llm_calls} calls "
            f"({runaway.tokens:,} tokens): {stop}"
        )
    total.add(runaway)
    base = f"http://{settings.api_host}:{settings.api_port}"
    expected = total.llm_calls + total.tool_calls + (1 if stop is not None else 0)
    body = _chargeback(base, since, expected_calls=expected)
    _render(body, console)
    stored = int(body["total"]["calls"])
    colour = "green" if stored == expected else "red"
    console.print(
        f"[{colour}]{stored} of {expected} recorded calls are in ClickHouse[/], charged ${body['total']['cost']}"
    )
