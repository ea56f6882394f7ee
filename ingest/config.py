"""The hook's settings: arguments to `ingest.configure()`, else environment variables.

| argument | environment variable | default |
| --- | --- | --- |
| bootstrap_servers | AGENTLEDGER_KAFKA_BOOTSTRAP | 127.0.0.1:19092 |
| topic_prefix | AGENTLEDGER_TOPIC_PREFIX | agentledger. |
| spool_dir | AGENTLEDGER_SPOOL_DIR | $XDG_STATE_HOME/agentledger/spool (~/.local/state/...) |
| queue_size | AGENTLEDGER_QUEUE_SIZE | 10000 |
| mode | AGENTLEDGER_MODE | production |
| spool_max_events | AGENTLEDGER_SPOOL_MAX_EVENTS | 1000000 |
| spool_max_bytes | AGENTLEDGER_SPOOL_MAX_BYTES | 1 GiB |
| listen_signals | AGENTLEDGER_LISTEN_SIGNALS | true (from Kafka; with transport="http", the API's signal stream) |
| transport | AGENTLEDGER_TRANSPORT | kafka (or http: POST /v1/events of the API) |
| api_url | AGENTLEDGER_API_URL | none (required with transport="http") |
| api_key | AGENTLEDGER_API_KEY | none (a key with the `ingest` scope) |
| http_batch_size | AGENTLEDGER_HTTP_BATCH_SIZE | 500 |
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ingest.estimate import Estimator
    from schemas.budgets import Signal

Mode = Literal["production", "development"]
Transport = Literal["kafka", "http"]


def default_spool_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "agentledger" / "spool"


@dataclass(frozen=True, slots=True)
class IngestConfig:
    bootstrap_servers: str = "127.0.0.1:19092"
    topic_prefix: str = "agentledger."
    spool_dir: Path = field(default_factory=default_spool_dir)
    queue_size: int = 10_000
    mode: Mode = "production"
    on_warn: Callable[[Signal], Any] | None = None
    spool_max_events: int = 1_000_000
    spool_max_bytes: int = 1 << 30
    max_in_flight: int = 20_000
    """Events handed to the producer and not yet acknowledged; the rest wait in the spool."""
    linger_ms: int = 2
    """Producer batching delay: small, since budgets act on events as they arrive."""
    listen_signals: bool = True
    status_wait_s: float = 1.0
    """How long the first guarded call waits for the session-status snapshot (once per process)."""
    exit_timeout_s: float = 5.0
    estimator: Estimator | None = None
    producer_config: Mapping[str, Any] = field(default_factory=dict)
    consumer_config: Mapping[str, Any] = field(default_factory=dict)
    transport: Transport = "kafka"
    api_url: str | None = None
    """The API's base URL (`https://ledger.example.com`) or its full `/v1/events` URL."""
    api_key: str | None = field(default=None, repr=False)
    http_batch_size: int = 500
    """Events per POST; keep it at or under the server's `ingest_max_events` (1000)."""
    http_max_bytes: int = 1 << 20
    """Bytes per POST body; keep it at or under the server's `ingest_max_bytes` (1 MiB)."""
    http_timeout_s: float = 30.0
    """Read timeout of a POST: the API answers once Kafka has acknowledged the batch."""
    http_auth_retry_s: float = 60.0
    """Wait between attempts while the API refuses the key (401/403), logged each time."""

    def __post_init__(self) -> None:
        if self.mode not in ("production", "development"):
            raise ValueError(f"mode must be 'production' or 'development', not {self.mode!r}")
        if self.queue_size < 1 or self.spool_max_events < 1 or self.spool_max_bytes < 1:
            raise ValueError("queue_size, spool_max_events and spool_max_bytes must be positive")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be positive")
        if self.transport not in ("kafka", "http"):
            raise ValueError(f"transport must be 'kafka' or 'http', not {self.transport!r}")
        if self.transport == "http":
            if not self.api_url or not self.api_url.startswith(("http://", "https://")):
                raise ValueError("transport='http' needs api_url='https://...' (or AGENTLEDGER_API_URL)")
            if self.http_batch_size < 1 or self.http_max_bytes < 1024 or self.http_timeout_s <= 0:
                raise ValueError("http_batch_size, http_max_bytes (>= 1024) and http_timeout_s must be positive")

    @property
    def development(self) -> bool:
        return self.mode == "development"


_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "bootstrap_servers": ("AGENTLEDGER_KAFKA_BOOTSTRAP", str),
    "topic_prefix": ("AGENTLEDGER_TOPIC_PREFIX", str),
    "spool_dir": ("AGENTLEDGER_SPOOL_DIR", Path),
    "queue_size": ("AGENTLEDGER_QUEUE_SIZE", int),
    "mode": ("AGENTLEDGER_MODE", str),
    "spool_max_events": ("AGENTLEDGER_SPOOL_MAX_EVENTS", int),
    "spool_max_bytes": ("AGENTLEDGER_SPOOL_MAX_BYTES", int),
    "listen_signals": ("AGENTLEDGER_LISTEN_SIGNALS", lambda v: v.strip().lower() in ("1", "true", "yes", "on")),
    "transport": ("AGENTLEDGER_TRANSPORT", lambda v: v.strip().lower()),
    "api_url": ("AGENTLEDGER_API_URL", str),
    "api_key": ("AGENTLEDGER_API_KEY", str),
    "http_batch_size": ("AGENTLEDGER_HTTP_BATCH_SIZE", int),
}


def build_config(overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> IngestConfig:
    """Explicit arguments win; then `AGENTLEDGER_*` variables; then the defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (var, parse) in _ENV.items():
        if var in env and env[var] != "":
            values[name] = parse(env[var])
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "spool_dir" in values:
        values["spool_dir"] = Path(values["spool_dir"]).expanduser()
    return IngestConfig(**values)
