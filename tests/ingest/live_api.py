"""The real API served by uvicorn on loopback, in a thread, stoppable and restartable on its port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx
import uvicorn
from fastapi import FastAPI

from api.signal_relay import end_signal_streams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveApi:
    """`start()` serves a fresh app from `make_app()` on the same port each time; `stop()` shuts
    uvicorn down the way SIGTERM would (in-flight requests finish, then the lifespan ends)."""

    def __init__(self, make_app: Callable[[], FastAPI], port: int | None = None) -> None:
        self.make_app = make_app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.app = self.make_app()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"uvicorn-{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"uvicorn on port {self.port} did not start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn on port {self.port} not started after {timeout}s")
            time.sleep(0.02)
        self._server, self._thread = server, thread
        assert httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200

    def stop(self, timeout: float = 60.0) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        end_signal_streams(self.app.state)  # as api.server does on SIGTERM
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"uvicorn on port {self.port} did not stop in {timeout}s")
