"""`agentledger up`: the whole pipeline on this machine.

Local Kafka (scripts/kafka.sh), the worker and the API (embedded ClickHouse with the sink
in the same process) as child processes, then the demo fleet. Ctrl-C or SIGTERM stops the
children and the broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import httpx
from rich.console import Console

from agentledger.kafka_admin import ensure_topics, wait_for_group
from agentledger.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = ROOT / "scripts" / "kafka.sh"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


class LocalStackError(RuntimeError):
    """A process of the local stack failed to start; its log file is named in the message."""


def _local_kafka_port(settings: Settings) -> int | None:
    servers = settings.kafka_bootstrap.split(",")
    host, _, port = servers[0].rpartition(":")
    if len(servers) == 1 and host in LOCAL_HOSTS and port.isdigit():
        return int(port)
    return None


def _kafka(command: str, port: int, settings: Settings) -> None:
    env = {**os.environ, "AGENTLEDGER_KAFKA_PORT": str(port), "AGENTLEDGER_KAFKA_HOME": str(settings.kafka_home)}
    try:
        subprocess.run(["bash", str(KAFKA_SCRIPT), command], check=True, env=env, cwd=ROOT, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        # the local broker listens where AGENTLEDGER_KAFKA_BOOTSTRAP points: that is the knob here
        raise LocalStackError(
            f"scripts/kafka.sh {command} failed ({exc}); see its message above. To run the local broker"
            f" on another port, set AGENTLEDGER_KAFKA_BOOTSTRAP (now {settings.kafka_bootstrap}),"
            " e.g. AGENTLEDGER_KAFKA_BOOTSTRAP=127.0.0.1:19492"
        ) from None


def _spawn(name: str, log_dir: Path) -> subprocess.Popen[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = (log_dir / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "agentledger.cli", name],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_http(url: str, children: dict[str, subprocess.Popen[bytes]], log_dir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, child in children.items():
            if child.poll() is not None:
                raise LocalStackError(f"{name} exited with {child.returncode}; see {log_dir / (name + '.log')}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise LocalStackError(f"{url} did not answer within {timeout:.0f}s; see {log_dir}")


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30.0, kill_wait: float = 10.0) -> int:
    """SIGTERM a child and wait for it; SIGKILL it if it has not exited after `timeout`. Its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(kill_wait)
    return proc.returncode


def _stop(children: dict[str, subprocess.Popen[bytes]], console: Console) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            console.print(f"[yellow]{name} did not stop in time; killing it[/]")
            child.kill()
            child.wait()
        # uvicorn re-raises SIGTERM after its graceful shutdown, so -SIGTERM is a clean stop too.
        clean = child.returncode in (0, -signal.SIGTERM)
        console.print(f"stopped {name}" + ("" if clean else f" [red](exit {child.returncode})[/]"))


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_local(settings: Settings, *, demo: bool, keep_kafka: bool) -> int:
    console = Console()
    log_dir = Path("var/log")
    port = _local_kafka_port(settings)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        if port is not None:
            console.rule("Kafka")
            _kafka("start", port, settings)
        ensure_topics(settings)
        console.rule("Processes")
        children["worker"] = _spawn("worker", log_dir)
        children["api"] = _spawn("api", log_dir)
        base = f"http://{settings.api_host}:{settings.api_port}"
        _wait_http(f"{base}/healthz", children, log_dir, timeout=120)
        if not wait_for_group(settings, settings.worker_id, timeout=120):
            raise LocalStackError(f"the worker did not join its consumer group; see {log_dir / 'worker.log'}")
        console.print(f"worker and api up (pids {children['worker'].pid}, {children['api'].pid}); logs in {log_dir}/")
        if demo:
            from agentledger.demo import run_demo

            run_demo(settings, console=console)
        console.rule("Ready")
        console.print(f"API: [bold]{base}[/]  (OpenAPI docs: {base}/docs, chargeback: {base}/v1/chargeback)")
        console.print(f"Dashboard: [bold]{base}/dashboard[/]")
        console.print("Press Ctrl-C to stop everything.")
        while True:
            for name, child in children.items():
                if child.poll() is not None:
                    console.print(f"[red]{name} exited with {child.returncode}; see {log_dir / (name + '.log')}[/]")
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("\nstopping…")
        return 0
    except LocalStackError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    finally:
        _stop(children, console)
        if port is not None and not keep_kafka:
            try:
                _kafka("stop", port, settings)
            except LocalStackError as exc:
                console.print(f"[red]{exc}[/]")
