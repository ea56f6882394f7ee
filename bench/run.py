"""Every benchmark in one run: prints one table and writes bench/results/latest.json (and a
dated copy). Each figure comes with its baseline measured in the same run and the ratio
measured / baseline; goals from the issues are marked met or MISSED, never adjusted.

    .venv/bin/python -m bench.run            # full: 200,000-event pipeline, 10M-event chargeback (~10 min)
    .venv/bin/python -m bench.run --quick    # 10,000 events, 1M-event chargeback (~3 min)

Runs against the local broker (scripts/kafka.sh start if nothing answers; it is never
stopped); every stage uses its own topic prefix and deletes its topics afterwards. Exits
non-zero if a stage crashed, not if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import RESULTS, ROOT, StageError, dist, ensure_broker, loadavg, median

console = Console(width=int(os.environ.get("COLUMNS", "170")))


# --------------------------------------------------------------------------- stages


def stage_hook(args: argparse.Namespace, run_tag: str, quick: bool) -> dict[str, Any]:
    from agentledger.kafka_admin import ensure_topics
    from agentledger.settings import Settings
    from bench import hook_overhead as h
    from bench.common import delete_topics

    calls = 5_000 if quick else 20_000
    repeats = 3
    settings = Settings(kafka_bootstrap=args.bootstrap, topic_prefix=f"bench{run_tag}h.")
    ensure_topics(settings)
    try:
        prefix, topic = settings.topic_prefix, settings.topic("cost-events")
        runs: dict[str, list[dict[str, Any]]] = {"bare_up": [], "hook_up": [], "bare_down": [], "hook_down": []}
        for _ in range(repeats):
            dead = h.dead_address()
            runs["bare_up"].append(h.bench_bare_produce("kafka up", args.bootstrap, topic, calls))
            runs["hook_up"].append(h.bench_hook("kafka up", args.bootstrap, prefix, calls, up=True))
            runs["bare_down"].append(h.bench_bare_produce("kafka down", dead, topic, calls))
            runs["hook_down"].append(h.bench_hook("kafka down", dead, prefix, calls, up=False))
        kill = h.bench_signal_latency(args.bootstrap, prefix, 50 if quick else 200)
    finally:
        delete_topics(settings)
    out: dict[str, Any] = {"calls": calls, "repeats": repeats, "kill_to_exception_us": kill, "runs": runs}
    for name, rs in runs.items():
        out[name] = {k: median([r[k] for r in rs]) for k in ("p50_us", "p99_us", "mean_us")}
    return out


def stage_signal(args: argparse.Namespace, run_tag: str, quick: bool) -> dict[str, Any]:
    from bench import signal_latency

    sessions = 150 if quick else 200
    runs = [signal_latency.run(args.bootstrap, run_tag, sessions) for _ in range(2 if quick else 3)]
    out: dict[str, Any] = {"sessions": sessions, "repeats": len(runs)}
    for key in ("signal_ms", "round_trip_ms"):  # percentiles over every sample of every run
        out[key] = dist([x for r in runs for x in r[key]["samples"]])
    out["missed"] = sum(r["signal_ms"]["missed"] for r in runs)
    out["slow_over_40ms"] = [r["signal_ms"]["slow_over_40ms"] for r in runs]
    out["runs"] = runs
    return out


def stage_pipeline(args: argparse.Namespace, run_tag: str, quick: bool) -> dict[str, Any]:
    from bench import pipeline

    # 200,000 events: at 10-15k events/s a 50,000-event run spent a third of its time waiting for
    # the last commit interval (2.8 s) to make its last events visible
    return pipeline.run(args.bootstrap, run_tag, 10_000 if quick else 200_000, repeats=2 if quick else 3)


def stage_pipeline_pinned(args: argparse.Namespace, run_tag: str, quick: bool) -> dict[str, Any]:
    """The same runs with the worker alone on one core, the sink, the broker and this process on
    the other: what the pipeline does when the scheduler does not make its one serial part (the
    worker's event loop) wait behind the others."""
    from bench import pipeline

    return pipeline.run(args.bootstrap, run_tag, 10_000 if quick else 200_000, repeats=2 if quick else 3, pin=True)


def stage_breakdown(args: argparse.Namespace, run_tag: str, quick: bool) -> dict[str, Any]:
    from bench import worker_breakdown

    return worker_breakdown.run(5_000 if quick else 20_000, repeats=3)


def stage_ceiling(args: argparse.Namespace, run_tag: str, quick: bool) -> dict[str, Any]:
    from bench import faust_ceiling

    return faust_ceiling.run(args.bootstrap, 10_000 if quick else 30_000)


def stage_chargeback(args: argparse.Namespace, run_tag: str, quick: bool) -> dict[str, Any]:
    events = 1_000_000 if quick else 10_000_000
    runs = 20 if quick else 15
    with tempfile.TemporaryDirectory(prefix="agentledger-bench-cb-") as tmp:
        out = Path(tmp) / "chargeback.json"
        argv = [sys.executable, "-m", "bench.chargeback", str(out), "--events", str(events), "--runs", str(runs)]
        argv += ["--path", str(Path(tmp) / "chdb")]
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1500)
        if proc.returncode != 0:
            raise StageError(f"chargeback_bench exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
        console.print(proc.stdout.rstrip(), markup=False, highlight=False)
        return json.loads(out.read_text())


STAGES: dict[str, Callable[[argparse.Namespace, str, bool], dict[str, Any]]] = {
    "hook": stage_hook,
    "signal": stage_signal,
    "pipeline": stage_pipeline,
    "pipeline_pinned": stage_pipeline_pinned,
    "breakdown": stage_breakdown,
    "ceiling": stage_ceiling,
    "chargeback": stage_chargeback,
}


# --------------------------------------------------------------------------- the table


def _ratio(measured: float | None, baseline: float | None) -> str:
    if not measured or not baseline:
        return "-"
    ratio = measured / baseline
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def _verdict(value: float | None, goal: str) -> str:
    if value is None or not goal:
        return "-"
    op, number = goal.split(" ", 1)
    target = float(number.replace(",", ""))
    ok = value < target if op == "<" else value >= target
    return "met" if ok else "MISSED"


def table_rows(stages: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: what, measured, baseline, unit, goal (an operator and a number)."""
    rows: list[dict[str, Any]] = []

    def add(figure: str, unit: str, measured: Any, baseline_name: str, baseline: Any, goal: str = "") -> None:
        rows.append(
            {
                "figure": figure,
                "unit": unit,
                "measured": measured,
                "baseline": baseline_name,
                "baseline_value": baseline,
                "ratio": _ratio(measured, baseline),
                "goal": goal,
                "verdict": _verdict(measured, goal),
            }
        )

    hook = stages.get("hook", {}).get("result")
    if hook:
        add(
            "hook record_llm_call p50, Kafka up",
            "µs",
            hook["hook_up"]["p50_us"],
            "bare Producer.produce() p50",
            hook["bare_up"]["p50_us"],
            "< 10",
        )
        add(
            "hook record_llm_call p99, Kafka up",
            "µs",
            hook["hook_up"]["p99_us"],
            "bare Producer.produce() p99",
            hook["bare_up"]["p99_us"],
            "< 100",
        )
        add(
            "hook record_llm_call p50, Kafka down",
            "µs",
            hook["hook_down"]["p50_us"],
            "bare produce() p50, down",
            hook["bare_down"]["p50_us"],
        )
        add(
            "hook record_llm_call p99, Kafka down",
            "µs",
            hook["hook_down"]["p99_us"],
            "bare produce() p99, down",
            hook["bare_down"]["p99_us"],
        )
    pipe = stages.get("pipeline", {}).get("result")
    if pipe:
        n = f"{pipe['events']:,}"
        add(
            f"worker validate→dedupe→price→budget ({n} events, exactly-once)",
            "events/s",
            pipe["worker_events_per_s"],
            "bare consume loop, same topic",
            pipe["bare_events_per_s"],
            ">= 20,000",
        )
        add(
            "end to end incl. sink into chDB",
            "events/s",
            pipe["e2e_events_per_s"],
            "bare consume loop, same topic",
            pipe["bare_events_per_s"],
            ">= 20,000",
        )
    pinned = stages.get("pipeline_pinned", {}).get("result")
    if pinned:
        add(
            "  the same, worker pinned to one core (sink, broker on the other): worker",
            "events/s",
            pinned["worker_events_per_s"],
            "bare consume loop, same topic",
            pinned["bare_events_per_s"],
            ">= 20,000",
        )
        add(
            "  the same, worker pinned: end to end",
            "events/s",
            pinned["e2e_events_per_s"],
            "bare consume loop, same topic",
            pinned["bare_events_per_s"],
            ">= 20,000",
        )
    ceiling = stages.get("ceiling", {}).get("result")
    if ceiling:
        add(
            "  faust's own consume path, handler parses only (exactly-once, no sends)",
            "events/s",
            ceiling["bare"]["events_per_s"],
            "the worker's handle_batch, same run",
            ceiling["full"]["events_per_s"],
        )
    sig = stages.get("signal", {}).get("result")
    if sig:
        add(
            f"signal: crossing call → BudgetExceeded p50 ({sig['signal_ms']['n']} sessions)",
            "ms",
            sig["signal_ms"]["p50"],
            "raw Kafka round trip p50",
            sig["round_trip_ms"]["p50"],
        )
        add(
            "signal: crossing call → BudgetExceeded p99",
            "ms",
            sig["signal_ms"]["p99"],
            "raw Kafka round trip p99",
            sig["round_trip_ms"]["p99"],
            "< 50",
        )
    if hook:
        kill = hook["kill_to_exception_us"]
        add(
            "  last hop only: kill signal produced → BudgetExceeded p50",
            "ms",
            round(kill["p50_us"] / 1000, 2),
            "raw Kafka round trip p50",
            sig["round_trip_ms"]["p50"] if sig else None,
        )
    cb = stages.get("chargeback", {}).get("result")
    if cb:
        n = f"{cb['events'] / 1e6:g}M"
        r = cb["results"]
        add(
            f"chargeback month by team, project ({n} events) p50",
            "ms",
            r["rollup_daily"]["p50_ms"],
            "same query on raw events p50",
            r["raw_dedup"]["p50_ms"],
            "< 100",
        )
        add(
            "chargeback p99",
            "ms",
            r["rollup_daily"]["p99_ms"],
            "same query on raw events p99",
            r["raw_dedup"]["p99_ms"],
        )
    if pipe:
        add("worker peak RSS (VmHWM) in the pipeline run", "MiB", pipe["worker_peak_rss_mib"], "", None)
        add("sink peak RSS (VmHWM, incl. chDB engine)", "MiB", pipe["sink_peak_rss_mib"], "", None)
    if pipe and pipe["cpu"].get("worker_cpu_us_per_event"):
        c = pipe["cpu"]
        add(
            f"worker CPU per event in the pipeline run (loop thread: {c['loop_thread_running']:.0%} running, "
            f"{c['loop_thread_waiting_for_cpu']:.0%} waiting for a core, {c['loop_thread_idle']:.0%} idle)",
            "µs",
            c["worker_cpu_us_per_event"],
            "",
            None,
        )
    if pipe and pipe["cpu"].get("sink_python_us_per_event") is not None:
        c = pipe["cpu"]
        add(
            f"sink CPU per event in the pipeline run (Python thread {c['sink_python_us_per_event']}, chDB query "
            f"threads {c['sink_chdb_threadpool_us_per_event']}, merges {c['sink_chdb_merges_us_per_event']}, "
            f"other {c['sink_other_us_per_event']} µs)",
            "µs",
            c["sink_cpu_us_per_event"],
            "",
            None,
        )
    if pipe and pipe["cpu"].get("total_cpu_us_per_event"):
        c = pipe["cpu"]
        parts = ", ".join(
            f"{name} {c[key]}"
            for name, key in (
                ("sink", "sink_cpu_us_per_event"),
                ("broker", "broker_cpu_us_per_event"),
                ("bench watchers", "bench_watchers_cpu_us_per_event"),
            )
            if key in c
        )
        add(
            f"CPU per event end to end, all processes ({parts} besides the worker)",
            "µs",
            c["total_cpu_us_per_event"],
            "2 cores at 20,000 events/s",
            100,
        )
    bd = stages.get("breakdown", {}).get("result")
    if bd:
        add("  of which the worker's own code (handle_batch, no Kafka)", "µs", bd["handle_batch_us"], "", None)
        add("    of which pricing (genai-prices rates, cached per model price)", "µs", bd["price_us"], "", None)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if (isinstance(value, float) and value >= 1000) or isinstance(value, int):
        return f"{value:,.0f}"
    return f"{value:g}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| figure | measured | baseline (same run) | ratio | goal |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    for r in rows:
        baseline = f"{r['baseline']}: {_fmt(r['baseline_value'])} {r['unit']}" if r["baseline"] else ""
        goal = f"{r['goal']} {r['unit']}: {r['verdict']}" if r["goal"] else ""
        lines.append(f"| {r['figure']} | {_fmt(r['measured'])} {r['unit']} | {baseline} | {r['ratio']} | {goal} |")
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for col, justify in (
        ("figure", "left"),
        ("measured", "right"),
        ("unit", "left"),
        ("baseline (same run)", "left"),
        ("baseline", "right"),
        ("ratio", "right"),
        ("goal", "right"),
        ("", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        verdict = r["verdict"]
        style = "green" if verdict == "met" else "red" if verdict == "MISSED" else ""
        table.add_row(
            r["figure"],
            _fmt(r["measured"]),
            r["unit"],
            r["baseline"],
            _fmt(r["baseline_value"]),
            r["ratio"],
            r["goal"],
            f"[{style}]{verdict}[/]" if style else verdict,
        )
    console.print(table)


# --------------------------------------------------------------------------- main


def _git(*argv: str) -> str:
    try:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _code_version() -> dict[str, Any]:
    """The commit measured: a git checkout (with its count of uncommitted files), or an exported
    tree (`git archive`) that carries its commit in `.bench-commit`."""
    commit = _git("rev-parse", "HEAD")
    if commit:
        return {
            "commit": commit,
            "tree": "git checkout",
            "uncommitted_files": len(_git("status", "--porcelain").splitlines()),
        }
    marker = ROOT / ".bench-commit"
    if marker.exists():
        return {"commit": marker.read_text().strip(), "tree": "git archive of the commit, no local changes"}
    return {"commit": None, "tree": str(ROOT)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes: about 3 minutes")
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--only", nargs="+", choices=list(STAGES), help="run only these stages")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/*.json")
    args = parser.parse_args()

    ensure_broker(args.bootstrap)
    run_tag = uuid.uuid4().hex[:6]
    started_at = datetime.now(UTC)
    report: dict[str, Any] = {
        "measured_at": started_at.isoformat(timespec="seconds"),
        "command": "python -m bench.run" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""),
        "mode": "quick" if args.quick else "full",
        "code": _code_version(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_start": loadavg(),
        },
        "stages": {},
    }
    failed: list[str] = []
    for name, stage in STAGES.items():
        if args.only and name not in args.only:
            continue
        console.rule(f"{name}  (load {loadavg()})")
        before, t0 = loadavg(), time.monotonic()
        entry: dict[str, Any] = {"loadavg_before": before}
        try:
            entry["result"] = stage(args, run_tag, args.quick)
            entry["ok"] = True
        except Exception as exc:  # a crashed stage is reported, the others still run
            failed.append(name)
            entry["ok"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}"
            console.print(f"[red]stage {name} crashed[/]")
            console.print(traceback.format_exc(), markup=False, highlight=False)
        entry["seconds"] = round(time.monotonic() - t0, 1)
        entry["loadavg_after"] = loadavg()
        report["stages"][name] = entry
        console.print(f"{name}: {entry['seconds']} s")

    report["machine"]["loadavg_end"] = loadavg()
    report["seconds"] = round((datetime.now(UTC) - started_at).total_seconds(), 1)
    report["table"] = table_rows(report["stages"])
    report["failed_stages"] = failed
    report["markdown"] = markdown_table(report["table"])
    title = (
        f"agentledger benchmarks, {report['mode']} run, {report['measured_at']} "
        f"({os.cpu_count()} cores, load {report['machine']['loadavg_start']} → {report['machine']['loadavg_end']})"
    )
    print_table(report["table"], title)
    if failed:
        console.print(f"[red]crashed stages: {', '.join(failed)}[/]")

    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report, indent=2, default=str) + "\n"
        (RESULTS / "latest.json").write_text(text)
        stamp = started_at.strftime("%Y-%m-%dT%H%M%SZ") + ("-quick" if args.quick else "")
        (RESULTS / f"{stamp}.json").write_text(text)
        console.print(f"wrote {RESULTS / 'latest.json'} and {stamp}.json ({report['seconds']} s in all)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
