"""`agentledger api`: the HTTP server (and, in embedded mode, the sink in the same process)."""

from __future__ import annotations

from types import FrameType

import uvicorn
from fastapi import FastAPI

from agentledger.settings import Settings
from api.app import create_app
from api.signal_relay import end_signal_streams


class _Server(uvicorn.Server):
    """uvicorn, ending the open signal streams when asked to stop."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        end_signal_streams(self._app.state)
        super().handle_exit(sig, frame)


def run(settings: Settings) -> None:
    """Serve on settings.api_host:api_port until SIGINT/SIGTERM. With chDB (no
    CLICKHOUSE_URL) the sink runs inside this process; with a server, run `agentledger sink`."""
    app = create_app(settings, with_sink=settings.clickhouse_url is None)
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_level="info", timeout_graceful_shutdown=10
    )
    _Server(config, app).run()
