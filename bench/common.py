"""What every benchmark stage shares: isolated settings on the real broker, a worker
subprocess, percentiles, peak memory from /proc, the load of the machine."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from agentledger.kafka_admin import delete_run_topics, ensure_topics
from agentledger.local import terminate
from agentledger.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KAFKA_SCRIPT = ROOT / "scripts" / "kafka.sh"


class StageError(Exception):
    """A benchmark stage could not produce its figure (a crash, not a missed goal)."""


# --------------------------------------------------------------------------- numbers


def pct(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; samples need not be sorted."""
    s = sorted(samples)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(len(s) * q))]


def dist(samples: Sequence[float], scale: float = 1.0, digits: int = 2) -> dict[str, float]:
    """p50 / p99 / max / mean of samples, each divided by `scale`."""
    return {
        "p50": round(statistics.median(samples) / scale, digits),
        "p99": round(pct(samples, 0.99) / scale, digits),
        "max": round(max(samples) / scale, digits),
        "mean": round(statistics.fmean(samples) / scale, digits),
        "n": len(samples),
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a live process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a live process has used so far (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """User + system CPU seconds of each live thread of a process, by thread id, with its name."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return out


class ThreadCpu:
    """CPU seconds of a process's threads between a first and a last sample, summed by thread
    name (the main thread as `main`). Sampled often enough, a thread that ends in between
    (chDB's pools start and stop threads) still counts up to its last sample; what ran after
    that is in `unsampled` (the process total minus the threads' sum)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first: dict[int, tuple[str, float]] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.total_first = self.total_last = 0.0

    def sample(self) -> None:
        threads = thread_cpu(self.pid)
        total = cpu_seconds(self.pid)
        if total is None:
            return
        if not self.first:
            self.first, self.total_first = threads, total
            # a thread born after this sample counts from zero
        self.last.update(threads)
        self.total_last = total

    def split(self) -> dict[str, float]:
        by_name: dict[str, float] = {}
        for tid, (comm, seconds) in self.last.items():
            name = "main" if tid == self.pid else comm
            by_name[name] = by_name.get(name, 0.0) + seconds - self.first.get(tid, (comm, 0.0))[1]
        by_name["unsampled"] = (self.total_last - self.total_first) - sum(by_name.values())
        return {k: round(v, 2) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])}


def schedstat(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of a process's main thread."""
    try:
        on_cpu, waiting, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None
    return int(on_cpu) / 1e9, int(waiting) / 1e9


# --------------------------------------------------------------------------- the broker


def port_open(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def ensure_broker(bootstrap: str) -> None:
    """Start the local broker through the project's script if nothing answers (never stops it)."""
    if port_open(bootstrap):
        return
    subprocess.run(["bash", str(KAFKA_SCRIPT), "start"], check=True, timeout=300)


def broker_pid(bootstrap: str) -> int | None:
    """The pid of the process listening on `bootstrap` (the local broker), if `ss` can tell."""
    port = bootstrap.rpartition(":")[2]
    try:
        out = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"pid=(\d+)", out)
    return int(found.group(1)) if found else None


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` on `cpus` (threads it starts later inherit their starter's set)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(task.name), cpus)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_bootstrap() -> str:
    """An address where nothing listens: Kafka down."""
    return f"127.0.0.1:{free_port()}"


@contextlib.contextmanager
def bench_settings(bootstrap: str, run_tag: str, stage: str, **overrides: Any) -> Iterator[Settings]:
    """Settings of one stage: its own topic prefix, worker id, sink group, database and chDB
    folder; the topics exist on entry and are deleted (with the worker's faust topics) on exit."""
    tag = f"{run_tag}{stage}{uuid.uuid4().hex[:4]}"
    chdb = Path(tempfile.mkdtemp(prefix=f"agentledger-bench-{stage}-"))
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "topic_prefix": f"bench{tag}.",
        "worker_id": f"benchw-{tag}",
        "sink_group": f"benchs-{tag}",
        "database": f"bench_{tag}",
        "chdb_path": chdb / "chdb",
        "partitions": 3,
    }
    values.update(overrides)
    settings = Settings(**values)
    try:
        ensure_topics(settings)
        yield settings
    finally:
        delete_topics(settings)
        import shutil

        shutil.rmtree(chdb, ignore_errors=True)


def delete_topics(settings: Settings) -> None:
    """Best effort: drop the stage's topics and its worker's faust topics."""
    try:
        delete_run_topics(settings)
    except Exception as exc:  # cleanup never fails a run
        print(f"warning: could not delete topics of {settings.topic_prefix}: {exc}", file=sys.stderr)


# --------------------------------------------------------------------------- processes


def settings_env(settings: Settings) -> dict[str, str]:
    env = settings.environment(worker_web_port=free_port())
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


class Child:
    """A subprocess (worker, sink) run from a scratch folder (faust writes `<id>-data` in its
    working directory), with its output in a log file kept for a post-mortem."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        settings: Settings,
        extra_env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        self.name = name
        self.cwd = Path(tempfile.mkdtemp(prefix=f"agentledger-bench-{name}-"))
        self.log_path = self.cwd / f"{name}.log"
        self._log = self.log_path.open("ab")
        env = settings_env(settings)
        env.update(extra_env or {})
        self.started = time.monotonic()
        # on `cpus` from its first instruction, so every thread it starts is there too
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        self.proc = subprocess.Popen(
            argv, cwd=self.cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=pin
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise StageError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def hwm_kib(self) -> int | None:
        return vm_hwm_kib(self.proc.pid)

    def stop(self, timeout: float = 30.0) -> int | None:
        code = terminate(self.proc, timeout)
        self._log.close()
        return code

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.cwd, ignore_errors=True)


def start_worker(settings: Settings, cpus: set[int] | None = None) -> Child:
    """`python -m processors.worker` as deployed: exactly-once, configured by AGENTLEDGER_*."""
    return Child("worker", [sys.executable, "-m", "processors.worker"], settings, cpus=cpus)
