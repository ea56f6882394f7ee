"""Budget signals over HTTP: the hook follows the API's `GET /v1/signals/stream` (server-sent
events) when it sends events with `transport="http"`, instead of reading Kafka.

The stream starts with the status of every session that is not active (the snapshot), then
`ready`, then each signal as it is issued. A dropped connection is retried with backoff; the
new stream's snapshot covers whatever was issued meanwhile. Like the Kafka listener, it never
raises into the agent: failures are logged once per outage and counted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator

import httpx

from ingest.config import IngestConfig
from ingest.signals import SignalTarget
from ingest.stats import Stats
from schemas.budgets import SessionStatus, Signal
from schemas.codec import decode

log = logging.getLogger("agentledger.ingest")

STREAM_PATH = "/v1/signals/stream"
READ_TIMEOUT_S = 30.0
"""Longer than the server's ping interval (10 s): silence this long means the link is dead."""


def stream_url(api_url: str) -> str:
    """The stream's URL from the API's base URL (or its `/v1/events` URL)."""
    base = api_url.rstrip("/")
    if base.endswith("/v1/events"):
        base = base[: -len("/v1/events")]
    return base + STREAM_PATH


def server_sent_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from the lines of a text/event-stream; comments are skipped."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


class SignalStream:
    """The background HTTP reader that feeds a `SignalTarget` (the hook's `SessionGuards`)."""

    def __init__(
        self, config: IngestConfig, guards: SignalTarget, stats: Stats, transport: httpx.BaseTransport | None = None
    ) -> None:
        assert config.api_url is not None
        self.url = stream_url(config.api_url)
        self.config = config
        self.guards = guards
        self.stats = stats
        self._transport = transport
        self._stop = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, name="agentledger-signal-stream", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            response.close()  # ends the blocking read
        self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._follow()
                backoff = 0.5  # the server ended a healthy stream: reconnect at once
            except Exception as exc:
                if self._stop.is_set():
                    return
                self.stats.add("errors")
                level = logging.WARNING if backoff == 0.5 else logging.DEBUG
                log.log(level, "agentledger: signal stream %s unavailable (%s); retrying", self.url, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _follow(self) -> None:
        headers = {"Accept": "text/event-stream", "User-Agent": "agentledger-hook"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=5.0)
        with (
            httpx.Client(headers=headers, timeout=timeout, transport=self._transport) as client,
            client.stream("GET", self.url) as response,
        ):
            self._response = response
            try:
                if response.status_code != 200:
                    raise RuntimeError(f"answered {response.status_code}")
                for event, data in server_sent_events(response.iter_lines()):
                    self._handle(event, data)
            finally:
                self._response = None

    def _handle(self, event: str, data: str) -> None:
        try:
            if event == "signal":
                self.guards.apply_signal(decode(Signal, data.encode()))
            elif event == "status":
                self.guards.apply_status(decode(SessionStatus, data.encode()))
            elif event == "ready":
                self.guards.ready.set()
                return
            else:
                return
            self.stats.add("signals")
        except Exception as exc:
            self.stats.add("errors")
            log.warning("agentledger: unreadable %s event on the signal stream: %s", event, type(exc).__name__)
