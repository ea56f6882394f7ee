"""`agentledger api`: the HTTP server (and, in embedded mode, the sink in the same process)."""

from __future__ import annotations

import uvicorn

from agentledger.settings import Settings
from api.app import create_app


def run(settings: Settings) -> None:
    """Serve on settings.api_host:api_port until SIGINT/SIGTERM. With chDB (no
    CLICKHOUSE_URL) the sink runs inside this process; with a server, run `agentledger sink`."""
    app = create_app(settings, with_sink=settings.clickhouse_url is None)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="info")
