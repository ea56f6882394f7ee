"""The whole pipeline under faults: a fleet of >= 100,000 events through the SDK hook while
the broker is stopped, the worker SIGKILLed, the sink crashed between insert and commit,
and 10 % of events delivered twice. Afterwards, without OPTIMIZE, every total is exact.

Everything runs for real on a private broker of this module (never the shared one): the
worker (`python -m processors.worker`), the sink (`agentledger sink`, embedded chDB) and
the alert dispatcher (`agentledger dispatcher`) as their own processes, supervised the way
an orchestrator would (a process that dies unplanned is restarted and reported).

Replay a run with the seed it prints: `AGENTLEDGER_CHAOS_SEED=<seed>`. Also:
`AGENTLEDGER_CHAOS_EVENTS` (100000), `AGENTLEDGER_CHAOS_RATE` (events/s the fleet offers,
1500), `AGENTLEDGER_CHAOS_KAFKA_PORT` (19592; the controller takes the next port).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient

import ingest
from agentledger.kafka_admin import ensure_topics
from agentledger.local import terminate
from agentledger.settings import AlertWebhook, Settings
from api.app import create_app
from api.sink import CRASH_EXIT_CODE
from api.warehouse.chdb import ChdbWarehouse
from processors.policies import publish_policy
from schemas.budgets import Action, BudgetPolicy, Scope, Signal
from schemas.events import DeadLetter
from schemas.topics import ALERTS, COST_EVENTS, COST_EVENTS_DLQ, PRICED_EVENTS, SIGNALS
from tests.chaos.fleet import DIMENSIONS, RUNAWAY, FleetPlan, Truth, plan_fleet, rate_card_yaml, run_fleet
from tests.conftest import delete_test_topics
from tests.ingest.conftest import PrivateBroker, read_topic
from tests.processors.alerts.conftest import Receiver

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("AGENTLEDGER_CHAOS_SEED", "20261129"))
EVENTS = int(os.environ.get("AGENTLEDGER_CHAOS_EVENTS", "100000"))
RATE = float(os.environ.get("AGENTLEDGER_CHAOS_RATE", "1500"))
PORT = int(os.environ.get("AGENTLEDGER_CHAOS_KAFKA_PORT", "19592"))
KILL_POLICY = "chaos-runaway-kill"
DRAIN_TIMEOUT_S = 600.0
STALL_S = 90.0
"""A worker whose committed offset on a partition with lag has not moved for this long is
stuck. Before processors/eos.py, faust 0.15.3 did that after a broker outage and a SIGKILL (one
partition's transaction left open, uncommitted and unlogged for over ten minutes). It is
restarted, as a liveness probe would, at most MAX_STALLS times, and reported; whatever it broke
(outputs written twice, say) still fails the run."""
MAX_STALLS = 2
DUPLICATE_DEAD_LETTERS = "dead letters written more than once"


@pytest.fixture(scope="module")
def chaos_broker() -> Iterator[PrivateBroker]:
    """A broker of the chaos suite's own, which the run stops and starts."""
    broker = PrivateBroker(PORT, ROOT / "var" / "chaos-kafka")
    broker.run("start")
    try:
        yield broker
    finally:
        broker.run("stop")


# --------------------------------------------------------------------------- processes


class Service:
    """One pipeline process, started again and again with the same command line."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {self.starts} at {time.time():.3f}\n".encode())
            log.flush()
            # in the run's folder: faust keeps its table data under the working directory
            self.proc = subprocess.Popen(
                self.argv, cwd=self.log_path.parent, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); the exit code."""
        if self.proc is None:
            return None
        return terminate(self.proc, timeout, kill_wait=30.0)


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float
    kind: str
    down_s: float = 0.0


@dataclass
class FaultRecord:
    kind: str
    planned_s: float
    started_s: float
    took_s: float
    note: str = ""


def fault_schedule(seed: int, duration_s: float) -> list[Fault]:
    """Seeded: one broker outage, two worker SIGKILLs, two sink crashes, at random times."""
    rng = random.Random(seed ^ 0x5EED)
    kinds = ["broker_outage", "worker_kill", "worker_kill", "sink_crash", "sink_crash"]
    rng.shuffle(kinds)
    times = sorted(rng.uniform(0.1, 0.85) * duration_s for _ in kinds)
    return [
        Fault(t, k, rng.uniform(4.0, 10.0) if k == "broker_outage" else 0.0) for t, k in zip(times, kinds, strict=True)
    ]


@dataclass
class Chaos:
    """Runs the fault schedule and, all the while, restarts any process that died unplanned."""

    broker: PrivateBroker
    services: dict[str, Service]
    crash_file: Path
    schedule: list[Fault]
    started: float = field(default_factory=time.monotonic)
    done: list[FaultRecord] = field(default_factory=list)
    unplanned: list[str] = field(default_factory=list)
    stalls: list[str] = field(default_factory=list)
    sink_crashes: list[FaultRecord] = field(default_factory=list)
    """Armed sink crashes that have not happened yet."""
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def now(self) -> float:
        return time.monotonic() - self.started

    def supervise(self) -> None:
        for name, service in self.services.items():
            code = service.exit_code()
            if code is None:
                continue
            if name == "sink" and self.crash_file.exists():
                # the planned crash: after a batch's inserts, before their commit
                self.crash_file.unlink()
                record = self.sink_crashes.pop(0)
                record.took_s = self.now() - record.started_s
                record.note = f"exit {code} after insert, before commit; restarted"
                if code != CRASH_EXIT_CODE:
                    self.unplanned.append(f"sink crash fault: exit {code}, not {CRASH_EXIT_CODE}")
            else:
                self.unplanned.append(f"{name} exited {code} at {self.now():.1f}s")
            service.start()

    def _wait_until(self, at_s: float) -> None:
        while not self.stop.is_set() and self.now() < at_s:
            self.supervise()
            time.sleep(0.5)

    def _apply(self, fault: Fault) -> str:
        if fault.kind == "broker_outage":
            self.broker.run("stop")
            time.sleep(fault.down_s)
            self.broker.run("start")
            return f"down {fault.down_s:.1f}s"
        if fault.kind == "worker_kill":
            self.services["worker"].kill()
            self.services["worker"].start()
            return "SIGKILL, restarted"
        assert fault.kind == "sink_crash"
        # The sink exits at its next batch with rows in it; supervise() restarts it.
        while self.crash_file.exists() and not self.stop.is_set():  # the previous one is still pending
            self.supervise()
            time.sleep(0.2)
        self.crash_file.touch()
        return "armed"

    def _run(self) -> None:
        try:
            for fault in self.schedule:
                self._wait_until(fault.at_s)
                if self.stop.is_set():
                    return
                begun = self.now()
                note = self._apply(fault)
                record = FaultRecord(fault.kind, fault.at_s, begun, self.now() - begun, note)
                if fault.kind == "sink_crash":
                    self.sink_crashes.append(record)
                self.done.append(record)
            while not self.stop.is_set():
                self.supervise()
                time.sleep(0.5)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        """Wait for the rest of the schedule, then stop supervising."""
        deadline = time.monotonic() + 300
        while (len(self.done) < len(self.schedule) or self.sink_crashes) and time.monotonic() < deadline:
            if not self.thread.is_alive():
                self.supervise()
            time.sleep(0.5)
        if self.sink_crashes:
            self.unplanned.append("a sink crash was armed but never happened")
            self.crash_file.unlink(missing_ok=True)
        self.stop.set()
        self.thread.join(300)
        if self.error is not None:
            raise self.error


# --------------------------------------------------------------------------- Kafka offsets


def _group_lag(bootstrap: str, group: str, topic: str, control_records: bool) -> dict[int, int]:
    """How far `group` is behind the end of each partition of `topic`; a transactional topic's
    last record is a commit marker, which a read_committed consumer never commits past."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in parts]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        lags = {}
        for tp in tps:
            high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
            end = high - 1 if control_records and high > 0 else high
            lags[tp.partition] = max(0, end - max(committed.get(tp.partition, 0), 0))
        return lags
    finally:
        consumer.close()


def _messages(settings: Settings, suffix: str) -> list[Any]:
    return read_topic(settings.kafka_bootstrap, settings.topic(suffix), timeout=60)


# --------------------------------------------------------------------------- the run


@dataclass
class Timings:
    phases: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.phases[name] = now - since
        return now


def _report(capsys: pytest.CaptureFixture[str], lines: list[str]) -> None:
    with capsys.disabled():
        print("\n" + "\n".join(f"chaos: {line}" for line in lines), flush=True)


@pytest.mark.timeout(1500)
def test_chaos_run_charges_every_event_once_and_enforces_every_kill(
    chaos_broker: PrivateBroker,
    tmp_path: Path,
    hook: Any,
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    t0 = time.monotonic()
    timings = Timings()
    plan: FleetPlan = plan_fleet(SEED, EVENTS)
    duration = EVENTS * 1.1 / RATE
    schedule = fault_schedule(SEED, duration)
    _report(
        capsys,
        [
            f"seed {SEED} (AGENTLEDGER_CHAOS_SEED to replay), {plan.planned_events:,} planned events "
            f"in {len(plan.sessions):,} sessions ({sum(s.runaway for s in plan.sessions)} runaway), "
            f"{len(plan.bad_events)} invalid, offered at {RATE:,.0f}/s for about {duration:.0f}s",
            "fault schedule: " + ", ".join(f"{f.kind}@{f.at_s:.1f}s" for f in schedule),
        ],
    )

    tag = uuid.uuid4().hex[:8]
    logs = ROOT / "var" / "chaos-runs" / f"{SEED}-{tag}"  # kept for a post-mortem
    logs.mkdir(parents=True)
    rate_card = tmp_path / "rate-card.yaml"
    rate_card.write_text(rate_card_yaml())
    crash_file = tmp_path / "crash-sink-now"
    settings = Settings(
        kafka_bootstrap=chaos_broker.bootstrap,
        topic_prefix=f"chaos{tag}.",
        worker_id=f"chaos-worker-{tag}",
        sink_group=f"chaos-sink-{tag}",
        database=f"chaos_{tag}",
        chdb_path=tmp_path / "chdb",
        partitions=4,
        rate_card=rate_card,
        sink_batch_seconds=0.5,
        sink_fault_crash_file=crash_file,
        alert_webhooks=(AlertWebhook(url=receiver.url("/hook"), name="chaos"),),
        alert_allow_private_destinations=True,
        alert_backoff_initial_s=0.2,
        alert_backoff_max_s=2.0,
        auth="disabled",
    )
    ensure_topics(settings)
    publish_policy(
        settings,
        BudgetPolicy(
            policy_id=KILL_POLICY,
            scope=(Scope.SESSION,),
            match={Scope.AGENT_TYPE: RUNAWAY.agent_type},
            limit_tokens=plan.runaway_limit_tokens,
            action=Action.KILL,
        ),
    )
    cli = [sys.executable, "-m", "agentledger.cli"]
    services = {
        "worker": Service("worker", [sys.executable, "-m", "processors.worker"], settings.environment(), logs),
        "sink": Service("sink", [*cli, "sink"], settings.environment(), logs),
        "dispatcher": Service("dispatcher", [*cli, "dispatcher"], settings.environment(), logs),
    }
    try:
        for service in services.values():
            service.start()
        hook(settings=settings, queue_size=50_000)
        chaos = Chaos(chaos_broker, services, crash_file, schedule)
        chaos.thread.start()
        t = timings.mark("setup", t0)

        truth: Truth = run_fleet(plan, settings.kafka_bootstrap, settings.topic(COST_EVENTS.suffix), rate=RATE)
        t = timings.mark("fleet", t)
        assert ingest.flush(timeout=300), f"the hook could not deliver everything: {ingest.stats()}"
        t = timings.mark("hook flush", t)
        chaos.finish()
        t = timings.mark("rest of the fault schedule", t)

        # Drain: the worker has consumed every cost event, the sink every priced event.
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        lags: tuple[dict[int, int], dict[int, int]] = ({}, {})
        still: dict[int, tuple[int, float]] = {}  # partition -> (worker lag, since when unchanged)
        while time.monotonic() < deadline:
            chaos.supervise()
            lags = (
                _group_lag(settings.kafka_bootstrap, settings.worker_id, settings.topic(COST_EVENTS.suffix), False),
                _group_lag(settings.kafka_bootstrap, settings.sink_group, settings.topic(PRICED_EVENTS.suffix), True),
            )
            if not any(lags[0].values()) and not any(lags[1].values()):
                break
            now = time.monotonic()
            for partition, lag in lags[0].items():
                if lag == 0 or still.get(partition, (-1, 0.0))[0] != lag:
                    still[partition] = (lag, now)
                elif now - still[partition][1] > STALL_S:
                    # What a liveness probe would do; counted, reported, and bounded below.
                    chaos.stalls.append(
                        f"partition {partition} stuck {lag} behind for {STALL_S:.0f}s at {chaos.now():.0f}s"
                    )
                    services["worker"].kill()
                    services["worker"].start()
                    still.clear()
                    break
            time.sleep(1.0)
        else:
            raise AssertionError(
                f"not drained in {DRAIN_TIMEOUT_S:.0f}s; lag by partition: worker {lags[0]}, sink {lags[1]}; "
                f"faults {chaos.done}; unplanned {chaos.unplanned}; logs in {logs}"
            )
        t = timings.mark("drain", t)

        alert_ids = [orjson.loads(m.value())["alert_id"] for m in _messages(settings, ALERTS.suffix)]
        receiver.wait_for("/hook", len(set(alert_ids)), timeout=120, settle=3.0)
        exits = {name: service.stop() for name, service in services.items()}
        t = timings.mark("alerts delivered, processes stopped", t)
    finally:
        for service in services.values():
            service.stop(30)

    signals = [Signal.model_validate_json(m.value()) for m in _messages(settings, SIGNALS.suffix)]
    letters = [
        (m.key().decode(), DeadLetter.model_validate_json(m.value()))
        for m in _messages(settings, COST_EVENTS_DLQ.suffix)
    ]
    deliveries = [r.headers.get("idempotency-key", "") for r in receiver.at("/hook")]
    # Not a promise (the sink's event ledger absorbs them), but worth seeing: priced events
    # the worker wrote more than once, visible to read_committed readers.
    priced_ids = Counter(
        orjson.loads(m.value())["event"]["event_id"] for m in _messages(settings, PRICED_EVENTS.suffix)
    )

    wh = ChdbWarehouse(settings.chdb_path)
    try:
        with TestClient(create_app(settings, wh, with_sink=False)) as client:
            reports = {}
            for dim in DIMENSIONS:
                response = client.get("/v1/chargeback", params={"group_by": dim})
                assert response.status_code == 200, response.text
                reports[dim] = response.json()
        runaway_rows = wh.query(
            "SELECT session_id, event_id, occurred_at FROM {db:Identifier}.event_ledger "
            "WHERE agent_type = {a:String} ORDER BY session_id, step",
            {"db": settings.database, "a": RUNAWAY.agent_type},
        )
    finally:
        wh.close()
    timings.mark("reports", t)

    in_flight: list[int] = []
    problems = _check(plan, truth, reports, signals, letters, alert_ids, deliveries, runaway_rows, in_flight)

    _report(
        capsys,
        [
            f"recorded {truth.recorded:,} distinct events through the hook ({truth.resent:,} sent twice), "
            f"{truth.bad_sent} invalid; {len(truth.kills)} sessions killed, calls after the kill signal was "
            f"issued (in flight) max {max(in_flight, default=0)}, median {sorted(in_flight)[len(in_flight) // 2] if in_flight else 0}",
            "faults: "
            + "; ".join(
                f"{r.kind} planned {r.planned_s:.1f}s ran {r.started_s:.1f}s took {r.took_s:.1f}s ({r.note})"
                for r in chaos.done
            ),
            f"unplanned exits (restarted): {chaos.unplanned or 'none'}; stalled workers restarted: "
            f"{chaos.stalls or 'none'}; clean stop exit codes {exits}; logs in {logs}",
            f"process starts: { {n: s.starts for n, s in services.items()} }; hook {ingest.stats()}",
            f"signals {len(signals)}, alerts {len(alert_ids)} ({len(set(alert_ids))} distinct), webhook posts "
            f"{len(deliveries)}, dead letters {len(letters)}",
            f"priced-events: {sum(priced_ids.values()):,} records, {len(priced_ids):,} distinct event_ids",
            "timings: "
            + ", ".join(f"{k} {v:.1f}s" for k, v in timings.phases.items())
            + f"; total {time.monotonic() - t0:.1f}s",
        ],
    )
    assert not problems, "\n".join(problems[:50])
    assert len(chaos.stalls) <= MAX_STALLS, f"the worker stalled {len(chaos.stalls)} times: {chaos.stalls}"
    delete_test_topics(settings)  # only after a pass: a failed run's topics stay for a post-mortem


def _check(
    plan: FleetPlan,
    truth: Truth,
    reports: dict[str, Any],
    signals: list[Signal],
    letters: list[tuple[str, DeadLetter]],
    alert_ids: list[str],
    deliveries: list[str],
    runaway_rows: list[dict[str, Any]],
    in_flight: list[int],
) -> list[str]:
    problems: list[str] = []

    # 1. chargeback = ground truth, to the last decimal, in every dimension
    assert truth.recorded >= plan.planned_events >= EVENTS
    for dim, body in reports.items():
        rows = {row["group"][dim]: row for row in body["rows"] if row["group"][dim] is not None}
        expected = {value: t for (d, value), t in truth.by.items() if d == dim}
        if set(rows) != set(expected):
            problems.append(f"{dim}: groups {sorted(rows)} != expected {sorted(expected)}")
        for value, t in expected.items():
            row = rows.get(value)
            if row is None:
                continue
            got = (Decimal(row["cost"]), row["calls"], row["input_tokens"], row["output_tokens"])
            want = (t.cost, t.calls, t.input_tokens, t.output_tokens)
            if got != want:
                problems.append(f"{dim}={value}: (cost, calls, in, out) {got} != truth {want}")
        total = body["total"]
        if (Decimal(total["cost"]), total["calls"]) != (truth.total.cost, truth.total.calls):
            problems.append(
                f"{dim}: total {total['cost']} / {total['calls']} != {truth.total.cost} / {truth.total.calls}"
            )

    # 2. every runaway session killed exactly once, nothing settled after the agent was stopped
    kills: dict[str, set[str]] = defaultdict(set)
    for s in signals:
        if s.action is Action.KILL:
            kills[s.session_id].add(s.signal_id)
    runaways = {s.session_id: s for s in plan.sessions if s.runaway}
    if truth.unexpected_stops:
        problems.append(f"sessions stopped without a kill budget: {truth.unexpected_stops}")
    if extra := set(kills) - set(runaways):
        problems.append(f"kill signals for sessions under no kill budget: {sorted(extra)[:10]}")
    events_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in runaway_rows:
        events_of[row["session_id"]].append(row)
    for session_id, session in runaways.items():
        seen = truth.kills.get(session_id)
        if seen is None:
            problems.append(
                f"{session_id}: never stopped (recorded {len(truth.runaway_calls.get(session_id, []))} calls)"
            )
            continue
        if seen.policy_id != KILL_POLICY:
            problems.append(f"{session_id}: stopped by {seen.policy_id}")
        if len(kills[session_id]) != 1:
            problems.append(f"{session_id}: {len(kills[session_id])} distinct kill signals")
            continue
        signal = next(s for s in signals if s.session_id == session_id and s.action is Action.KILL)
        cumulative, crossing = 0, None
        for call in seen.calls:
            cumulative += call.tokens
            if cumulative >= plan.runaway_limit_tokens:
                crossing = session.event_id(call)
                break
        if signal.trigger_event_id != crossing:
            problems.append(
                f"{session_id}: kill triggered by {signal.trigger_event_id}, the crossing call is {crossing}"
            )
        stored = events_of.get(session_id, [])
        if [r["event_id"] for r in stored] != [session.event_id(c) for c in seen.calls]:
            problems.append(f"{session_id}: {len(stored)} settled calls stored, the agent recorded {len(seen.calls)}")
        late = [r for r in stored if r["occurred_at"] > seen.stopped_at]
        if late:
            problems.append(f"{session_id}: {len(late)} calls settled after the agent was stopped")
        in_flight.append(sum(1 for r in stored if r["occurred_at"] > signal.issued_at))

    # 3. no alert delivered twice, every alert delivered
    twice = [k for k, n in Counter(deliveries).items() if n > 1]
    if twice:
        problems.append(f"alerts delivered more than once: {twice[:10]}")
    if set(deliveries) != set(alert_ids):
        problems.append(f"delivered {len(set(deliveries))} alerts, the alerts topic has {len(set(alert_ids))}")
    if len(set(alert_ids)) < 3 * len(runaways):
        problems.append(f"{len(set(alert_ids))} alerts for {len(runaways)} killed sessions with 3 thresholds each")

    # 4. the dead-letter topic holds exactly the injected invalid events, each with its reason
    injected = {b.key: b for b in plan.bad_events}
    keys = Counter(key for key, _ in letters)
    if set(keys) != set(injected):
        missing, extra = sorted(set(injected) - set(keys)), sorted(set(keys) - set(injected))
        problems.append(f"dead letters: {len(injected)} injected, missing {missing[:10]}, not injected {extra[:10]}")
    if twice := {
        k: [(x.topic, x.partition, x.offset) for key, x in letters if key == k] for k, n in keys.items() if n > 1
    }:
        problems.append(f"{DUPLICATE_DEAD_LETTERS}: {twice}")
    for key, letter in letters:
        bad = injected.get(key)
        if bad is not None and (letter.error_code != bad.expected_code or not letter.reason):
            problems.append(f"{key} ({bad.what}): dead-lettered as {letter.error_code!r} ({letter.reason[:80]})")
    return problems
