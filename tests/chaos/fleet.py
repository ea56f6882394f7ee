"""A simulated fleet of agents for the chaos run, with its own ground truth.

The fleet records through the real SDK hook; what it expects the pipeline to charge is
plain Decimal arithmetic over the rate card it hands the worker (`rate_card_yaml`), never
the pipeline's pricing code. Prices have at most six decimals per million tokens, so every
call's cost is exact at the warehouse's twelve decimal places: no rounding to agree on.

The plan is drawn from one seed; the threads that drive it interleave at the machine's
whim, so what is seeded is the work and the fault schedule, not the interleaving.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import orjson
from confluent_kafka import Producer

import ingest
from schemas.events import MAX_EVENT_BYTES, derive_event_id

MTOK = Decimal(1_000_000)
DIMENSIONS = ("team", "project", "customer", "agent_type", "model")


@dataclass(frozen=True, slots=True)
class ModelRate:
    provider: str
    model: str
    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal


MODELS = {
    m.model: m
    for m in (
        # real models at made-up negotiated prices (the rate card wins over genai-prices) ...
        ModelRate("openai", "gpt-4o-mini", Decimal("0.135"), Decimal("0.54"), Decimal("0.0675")),
        ModelRate("openai", "gpt-4.1", Decimal("1.7"), Decimal("6.8"), Decimal("0.425")),
        ModelRate("anthropic", "claude-haiku-4-5", Decimal("0.91"), Decimal("4.55"), Decimal("0.091")),
        ModelRate("anthropic", "claude-sonnet-4-5", Decimal("2.75"), Decimal("13.75"), Decimal("0.275")),
        # ... and a self-hosted one that only the rate card knows, with awkward prices
        ModelRate("acme", "acme-large-selfhosted", Decimal("0.333333"), Decimal("1.234567"), Decimal("0.033333")),
    )
}
TOOL_FEES = {"web_search": Decimal("0.005"), "code_exec": Decimal("0.00125"), "vector_lookup": Decimal("0.0000375")}
RATE_CARD_VERSION = "chaos-1"


def rate_card_yaml() -> str:
    """The worker's rate card: the fleet's prices, as the README documents the format."""
    lines = [f'version: "{RATE_CARD_VERSION}"', "models:"]
    for m in MODELS.values():
        lines += [
            f"  - model: {m.model}",
            f"    provider: {m.provider}",
            f'    input_mtok: "{m.input_mtok}"',
            f'    output_mtok: "{m.output_mtok}"',
            f'    cache_read_mtok: "{m.cache_read_mtok}"',
        ]
    lines.append("tool_fees:")
    lines += [f'  {name}: "{fee}"' for name, fee in TOOL_FEES.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Profile:
    agent_type: str
    team: str
    project: str
    models: tuple[str, ...]
    tools: tuple[str, ...]
    tool_share: float


PROFILES = (
    Profile("pr-reviewer", "platform", "code-review", ("gpt-4o-mini", "gpt-4.1"), ("code_exec",), 0.2),
    Profile("support-bot", "support", "helpdesk", ("claude-haiku-4-5", "gpt-4o-mini"), ("vector_lookup",), 0.35),
    Profile("researcher", "search", "deep-research", ("gpt-4.1", "claude-sonnet-4-5"), ("web_search",), 0.4),
    Profile("sql-analyst", "data", "warehouse-qa", ("acme-large-selfhosted", "gpt-4o-mini"), ("code_exec",), 0.3),
    Profile("triager", "platform", "incident-triage", ("claude-haiku-4-5",), ("web_search", "vector_lookup"), 0.25),
)
RUNAWAY = Profile("runaway-loop", "search", "deep-research", ("claude-sonnet-4-5",), ("web_search",), 0.0)
CUSTOMERS = ("acme", "globex", "initech", "umbrella", "internal")


@dataclass(frozen=True, slots=True)
class Call:
    step: int
    kind: Literal["llm", "tool"]
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0
    tool: str | None = None
    duration_ms: int = 0
    resend: bool = False
    """Delivered twice: the retry records the same step again, so the same event_id."""

    @property
    def step_name(self) -> str:
        return self.tool or "llm"

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens

    def cost(self) -> Decimal:
        """What the rate card says this call costs: the ground truth."""
        if self.kind == "tool":
            assert self.tool is not None
            return TOOL_FEES[self.tool]
        assert self.model is not None
        rate = MODELS[self.model]
        return (
            Decimal(self.input_tokens) * rate.input_mtok
            + Decimal(self.cache_read_tokens) * rate.cache_read_mtok
            + Decimal(self.output_tokens) * rate.output_mtok
        ) / MTOK


@dataclass(frozen=True, slots=True)
class SessionPlan:
    session_id: str
    workflow_id: str
    profile: Profile
    customer: str
    calls: tuple[Call, ...]
    runaway: bool = False

    def attribution(self, call: Call) -> dict[str, str]:
        return {
            "team": self.profile.team,
            "project": self.profile.project,
            "customer": self.customer,
            "agent_type": self.profile.agent_type,
            "model": call.model or "",
        }

    def event_id(self, call: Call) -> str:
        return derive_event_id(self.workflow_id, call.step, call.step_name)


@dataclass(frozen=True, slots=True)
class BadEvent:
    """An invalid event produced straight to `cost-events`, keyed by its own id."""

    key: str
    payload: bytes
    expected_code: str
    what: str


@dataclass(frozen=True, slots=True)
class FleetPlan:
    seed: int
    sessions: tuple[SessionPlan, ...]
    bad_events: tuple[BadEvent, ...]
    runaway_limit_tokens: int

    @property
    def planned_events(self) -> int:
        return sum(len(s.calls) for s in self.sessions if not s.runaway)


def _lognormal(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return max(low, min(high, int(rng.lognormvariate(math.log(median), sigma))))


def _llm_call(rng: random.Random, step: int, model: str, big: bool = False) -> Call:
    input_tokens = _lognormal(rng, 6000 if big else 1500, 0.5 if big else 1.1, 1, 120_000)
    output_tokens = _lognormal(rng, 900 if big else 260, 0.6 if big else 0.9, 1, 16_000)
    cache_read = int(input_tokens * rng.uniform(0.3, 3.0)) if rng.random() < 0.35 else 0
    reasoning = rng.randint(0, output_tokens) if model in ("gpt-4.1", "claude-sonnet-4-5") and rng.random() < 0.3 else 0
    return Call(step, "llm", model, input_tokens, output_tokens, cache_read, reasoning, resend=rng.random() < 0.1)


def _session_calls(rng: random.Random, profile: Profile, count: int) -> tuple[Call, ...]:
    calls = []
    for step in range(count):
        if rng.random() < profile.tool_share:
            tool = rng.choice(profile.tools)
            calls.append(Call(step, "tool", tool=tool, duration_ms=rng.randint(5, 9000), resend=rng.random() < 0.1))
        else:
            calls.append(_llm_call(rng, step, rng.choice(profile.models)))
    return tuple(calls)


def _bad_events(rng: random.Random, count: int, run: str) -> tuple[BadEvent, ...]:
    def valid(n: int) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "event_id": derive_event_id(f"bad-{run}", n, "llm"),
            "kind": "llm_call",
            "occurred_at": datetime.now(UTC).isoformat(),
            "session_id": f"bad-{run}-{n}",
            "workflow_id": f"bad-{run}",
            "step": n,
            "step_name": "llm",
            "agent_type": "pr-reviewer",
            "team": "platform",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "input_tokens": 10,
            "output_tokens": 10,
        }

    def variant(n: int) -> tuple[bytes, str, str]:
        event = valid(n)
        match n % 7:
            case 0:
                return orjson.dumps(event)[:-9], "invalid_json", "truncated JSON"
            case 1:
                event["input_tokens"] = "lots"
                return orjson.dumps(event), "schema", "wrong type"
            case 2:
                event["output_tokens"] = -rng.randint(1, 10_000)
                return orjson.dumps(event), "schema", "negative tokens"
            case 3:
                event["input_tokens"] = 10**15
                return orjson.dumps(event), "schema", "absurd tokens"
            case 4:
                event["schema_version"] = 2
                return orjson.dumps(event), "schema", "unknown schema version"
            case 5:
                event["tags"] = {"note": "x" * 100}
                event["padding"] = "y" * MAX_EVENT_BYTES
                return orjson.dumps(event), "oversize", "oversize"
            case _:
                event["prompt"] = "CANARY-PROMPT: summarise the customer's contract"
                return orjson.dumps(event), "schema", "prompt field smuggled in"

    out = []
    for n in range(count):
        payload, code, what = variant(n)
        out.append(BadEvent(f"bad-{run}-{n}", payload, code, what))
    return tuple(out)


def plan_fleet(seed: int, events: int, runaways: int = 24, bad: int = 70) -> FleetPlan:
    """Sessions adding up to `events` distinct well-behaved events, `runaways` sessions that
    loop until their kill budget stops them, and `bad` invalid events."""
    rng = random.Random(seed)
    run = f"{seed:x}"
    sessions: list[SessionPlan] = []
    total = 0
    n = 0
    while total < events:
        profile = rng.choice(PROFILES)
        count = min(_lognormal(rng, 40, 1.0, 1, 600), events - total)
        sessions.append(
            SessionPlan(
                f"s{run}-{n}", f"wf{run}-{n}", profile, rng.choice(CUSTOMERS), _session_calls(rng, profile, count)
            )
        )
        total += count
        n += 1
    limit = 60_000
    for r in range(runaways):
        # far more calls than the limit allows: the kill must stop them
        calls = tuple(_llm_call(rng, step, RUNAWAY.models[0], big=True) for step in range(600))
        sessions.append(SessionPlan(f"runaway{run}-{r}", f"wfr{run}-{r}", RUNAWAY, rng.choice(CUSTOMERS), calls, True))
    rng.shuffle(sessions)
    return FleetPlan(seed, tuple(sessions), _bad_events(rng, bad, run), limit)


# --------------------------------------------------------------------------- ground truth


@dataclass
class Totals:
    cost: Decimal = Decimal(0)
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class KillSeen:
    """What the agent saw of its kill: the calls it had recorded, and when it was stopped."""

    calls: list[Call]
    policy_id: str
    stopped_at: datetime


@dataclass
class Truth:
    by: dict[tuple[str, str], Totals] = field(default_factory=lambda: defaultdict(Totals))
    total: Totals = field(default_factory=Totals)
    recorded: int = 0
    """Distinct events recorded through the hook."""
    resent: int = 0
    bad_sent: int = 0
    kills: dict[str, KillSeen] = field(default_factory=dict)
    unexpected_stops: dict[str, str] = field(default_factory=dict)
    runaway_calls: dict[str, list[Call]] = field(default_factory=dict)

    def add(self, plan: SessionPlan, call: Call) -> None:
        cost = call.cost()
        for bucket in (*(self.by[(d, v)] for d, v in plan.attribution(call).items() if v), self.total):
            bucket.cost += cost
            bucket.calls += 1
            bucket.input_tokens += call.input_tokens
            bucket.output_tokens += call.output_tokens
        self.recorded += 1

    def merge(self, other: Truth) -> None:
        for key, t in other.by.items():
            mine = self.by[key]
            mine.cost += t.cost
            mine.calls += t.calls
            mine.input_tokens += t.input_tokens
            mine.output_tokens += t.output_tokens
        self.total.cost += other.total.cost
        self.total.calls += other.total.calls
        self.total.input_tokens += other.total.input_tokens
        self.total.output_tokens += other.total.output_tokens
        self.recorded += other.recorded
        self.resent += other.resent
        self.bad_sent += other.bad_sent
        self.kills.update(other.kills)
        self.unexpected_stops.update(other.unexpected_stops)
        self.runaway_calls.update(other.runaway_calls)


# --------------------------------------------------------------------------- the driver


def _record(session: ingest.Session, call: Call) -> None:
    if call.kind == "tool":
        assert call.tool is not None
        # the hook reports a fee of its own; the rate card's fee must win
        session.record_tool_call(
            call.tool, call.duration_ms, fee=Decimal("0.5"), step=call.step, step_name=call.step_name
        )
    else:
        assert call.model is not None
        session.record_llm_call(
            MODELS[call.model].provider,
            call.model,
            call.input_tokens,
            call.output_tokens,
            cache_read_tokens=call.cache_read_tokens,
            reasoning_tokens=call.reasoning_tokens,
            step=call.step,
            step_name=call.step_name,
        )


class _Live:
    """One open session: its plan, the hook's session object, where it is, retries owed."""

    def __init__(self, plan: SessionPlan) -> None:
        self.plan = plan
        self.session = ingest.session(
            session_id=plan.session_id,
            agent_type=plan.profile.agent_type,
            team=plan.profile.team,
            project=plan.profile.project,
            customer=plan.customer,
            workflow_id=plan.workflow_id,
            tags={"fleet": "chaos"},
        )
        self.next = 0
        self.retries: list[Call] = []
        self.recorded: list[Call] = []

    @property
    def done(self) -> bool:
        return self.next >= len(self.plan.calls) and not self.retries


def _drive(
    plans: list[SessionPlan],
    bad: list[BadEvent],
    rate: float,
    rng: random.Random,
    open_sessions: int,
    bad_producer: Callable[[BadEvent], None],
    progress: Callable[[int], None],
    kill_wait_s: float,
) -> Truth:
    truth = Truth()
    queue: Iterator[SessionPlan] = iter(plans)
    live: list[_Live] = []
    bad_every = max(1, sum(len(p.calls) for p in plans if not p.runaway) // max(1, len(bad) + 1))
    started = time.monotonic()
    sent = 0

    def refill() -> None:
        while len(live) < open_sessions:
            plan = next(queue, None)
            if plan is None:
                return
            live.append(_Live(plan))

    def stopped(item: _Live, error: ingest.BudgetExceeded) -> None:
        plan = item.plan
        if plan.runaway:
            truth.kills[plan.session_id] = KillSeen(list(item.recorded), error.policy_id, datetime.now(UTC))
        else:
            truth.unexpected_stops[plan.session_id] = f"{error.policy_id}: {error}"
        truth.runaway_calls[plan.session_id] = list(item.recorded)
        live.remove(item)

    waiting: list[_Live] = []
    refill()
    while live:
        item = rng.choice(live)
        plan = item.plan
        try:
            item.session.check()  # an agent asks before it calls the model
            if item.retries and (rng.random() < 0.5 or item.next >= len(plan.calls)):
                _record(item.session, item.retries.pop(0))
                truth.resent += 1
            elif item.next < len(plan.calls):
                call = plan.calls[item.next]
                item.next += 1
                item.recorded.append(call)
                truth.add(plan, call)
                if call.resend:
                    item.retries.append(call)
                _record(item.session, call)
        except ingest.BudgetExceeded as error:
            stopped(item, error)
            refill()
            continue
        sent += 1
        if bad and sent % bad_every == 0:
            bad_producer(bad.pop())
            truth.bad_sent += 1
        if item.done:
            live.remove(item)
            if plan.runaway:
                waiting.append(item)  # out of calls before its kill came: it waits for it
            refill()
        if sent % 100 == 0:
            progress(100)
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    for b in bad:
        bad_producer(b)
        truth.bad_sent += 1
    deadline = time.monotonic() + kill_wait_s
    while waiting and time.monotonic() < deadline:
        for item in list(waiting):
            try:
                item.session.check()
            except ingest.BudgetExceeded as error:
                live.append(item)
                stopped(item, error)
                waiting.remove(item)
        time.sleep(0.05)
    for item in waiting:
        truth.runaway_calls[item.plan.session_id] = list(item.recorded)
    return truth


def run_fleet(
    plan: FleetPlan,
    bootstrap: str,
    cost_events_topic: str,
    *,
    rate: float,
    threads: int = 4,
    open_sessions: int = 200,
    kill_wait_s: float = 300.0,
) -> Truth:
    """Drive the plan through the configured hook from `threads` threads at about `rate`
    events/s in all; invalid events go straight to `cost_events_topic` with a plain producer.
    A runaway session that runs out of planned calls before its kill arrives (the pipeline
    may be down) waits up to `kill_wait_s` for it. Returns the ground truth of what was
    recorded."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "message.timeout.ms": 600_000,
        }
    )
    lock = threading.Lock()
    done = Counter[str]()

    def produce_bad(b: BadEvent) -> None:
        with lock:
            producer.produce(cost_events_topic, key=b.key.encode(), value=b.payload)
            producer.poll(0)

    def progress(n: int) -> None:
        with lock:
            done["events"] += n

    shares: list[list[SessionPlan]] = [[] for _ in range(threads)]
    for i, s in enumerate(plan.sessions):
        shares[i % threads].append(s)
    bads: list[list[BadEvent]] = [[] for _ in range(threads)]
    for i, b in enumerate(plan.bad_events):
        bads[i % threads].append(b)
    results: list[Truth | BaseException] = [Truth() for _ in range(threads)]

    def work(i: int) -> None:
        try:
            results[i] = _drive(
                shares[i],
                bads[i],
                rate / threads,
                random.Random(plan.seed * 1000 + i),
                open_sessions // threads,
                produce_bad,
                progress,
                kill_wait_s,
            )
        except BaseException as exc:
            results[i] = exc

    workers = [threading.Thread(target=work, args=(i,), name=f"fleet-{i}") for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    remaining = producer.flush(600)
    assert remaining == 0, f"{remaining} invalid events not delivered"
    truth = Truth()
    for r in results:
        if isinstance(r, BaseException):
            raise r
        truth.merge(r)
    return truth
