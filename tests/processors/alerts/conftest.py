"""Fixtures for the alert dispatcher: a webhook receiver on 127.0.0.1 and dispatchers in threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from confluent_kafka import Producer

from agentledger.settings import Settings
from processors.alerts.dispatcher import AlertConsumer
from schemas import codec
from schemas.budgets import Alert
from schemas.topics import ALERTS


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class Receiver:
    """A webhook receiver on 127.0.0.1: per path, a queue of scripted answers (then 200)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.scripts: dict[str, list[Answer]] = {}
        self.defaults: dict[str, Answer] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    queue = receiver.scripts.get(self.path)
                    answer = queue.pop(0) if queue else receiver.defaults.get(self.path, Answer())
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, *answers: Answer) -> None:
        with self.lock:
            self.scripts[path] = list(answers)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 60.0, settle: float = 3.0) -> list[Received]:
        """Wait until `path` got `count` requests, then `settle` seconds more to catch extras."""
        deadline = time.monotonic() + timeout
        while len(self.at(path)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle)
        return self.at(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Running:
    def __init__(self, consumer: AlertConsumer) -> None:
        self.consumer = consumer
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.consumer.run(self.stop)
        except BaseException as exc:
            self.error = exc

    def halt(self, timeout: float = 60.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "dispatcher did not stop"


@pytest.fixture
def dispatcher_factory() -> Iterator[Callable[..., Running]]:
    """Run an AlertConsumer (or a subclass) in a thread; every one is stopped at the end."""
    running: list[Running] = []

    def start(settings: Settings, consumer_type: type[AlertConsumer] = AlertConsumer) -> Running:
        r = Running(consumer_type(settings))
        running.append(r)
        return r

    yield start
    for r in running:
        r.halt()


def produce_alerts(settings: Settings, alerts: list[Alert]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 0})
    for alert in alerts:
        producer.produce(settings.topic(ALERTS.suffix), key=alert.policy_id.encode(), value=codec.encode(alert))
    assert producer.flush(10) == 0
