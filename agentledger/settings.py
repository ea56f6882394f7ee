"""Settings for every agentledger process, read once from the environment and frozen.

Every variable is `AGENTLEDGER_<FIELD>` (upper case), except `CLICKHOUSE_URL`, which
selects the ClickHouse server adapter instead of the embedded chDB engine. The README's
"Configuration" table lists them; `agentledger settings` prints the values in force.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AlertWebhook(BaseModel):
    """One alert destination: `{"url": "https://...", "format": "json" | "slack", "name": "..."}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1, max_length=2048)
    format: Literal["json", "slack"] = "json"
    name: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")
    """A label for delivery records and logs; the URL itself (often a secret) is never recorded."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTLEDGER_", frozen=True, extra="ignore", populate_by_name=True)

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:19092"
    topic_prefix: str = Field(default="agentledger.", pattern=r"^[A-Za-z0-9._-]*$", max_length=100)
    partitions: int = Field(default=3, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=7)

    # processors
    worker_id: str = "agentledger-worker"
    """faust app id: the consumer group and the prefix of its changelog topics."""
    worker_web_port: int = Field(default=6066, ge=1, le=65535)
    dedupe_retention_s: int = Field(default=7 * 24 * 3600, ge=60)
    unpriced_policy: Literal["fallback", "block"] = "fallback"
    fallback_price_per_mtok_input: Decimal = Decimal("10")
    fallback_price_per_mtok_output: Decimal = Decimal("30")
    rate_card: Path | None = None
    """YAML rate card that overrides genai-prices where it applies."""
    session_token_cap: int | None = Field(default=None, ge=1)
    """Default per-session lifetime token cap applied to every session (kill), if set."""
    max_future_skew_s: int = Field(default=300, ge=0)
    late_grace_s: int = Field(default=3600, ge=0)
    reservation_timeout_s: int = Field(default=600, ge=1)
    """A call_started's reservation with no settling event is released after this (processing time)."""
    commit_interval_s: float = Field(default=2.8, gt=0, le=60)
    """How often the worker commits its transactions (faust's broker_commit_interval): priced
    events, alerts and budget state become visible to read_committed readers at each commit.
    Signals never wait for it (see processors.scope_preview)."""
    quiet_commit_s: float = Field(default=0.2, ge=0, le=60)
    """The worker also commits once no cost event has arrived for this long after a batch, so the
    end of a burst (or a lone event) is visible without waiting for the commit interval; 0: only
    at the commit interval (and every 10,000 acked events, as under load)."""
    worker_data_dir: Path = Path("var/worker")
    """faust's data folder for each worker id (its tables live in memory; faust still makes one)."""

    # warehouse
    clickhouse_url: str | None = Field(
        default=None, validation_alias=AliasChoices("CLICKHOUSE_URL", "AGENTLEDGER_CLICKHOUSE_URL")
    )
    chdb_path: Path = Path("var/chdb")
    database: str = Field(default="agentledger", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)

    # sink
    sink_group: str = "agentledger-sink"
    sink_batch_rows: int = Field(default=20_000, ge=1, le=1_000_000)
    sink_batch_seconds: float = Field(default=1.0, gt=0, le=60)
    """A sink batch, one block in each table, holds up to `sink_batch_rows` records or what came
    in `sink_batch_seconds`. At 20,000 rather than 10,000 rows, 200,000 events make 10 parts in
    each table instead of 20: the sink's CPU per event 31-32 -> 27-28 µs, its merges 5.1-5.6 ->
    2.8-3.2 (bench.pipeline, two runs of each, alternated). Below 20,000 events/s the seconds
    bound a batch first."""
    sink_fault_crash_file: Path | None = None
    """Fault injection for the chaos tests only; leave unset. While this file exists, the sink
    process exits at once (os._exit, no clean-up) after a batch's inserts and before it commits
    their offsets: the crash that the insert deduplication tokens and the event ledger absorb."""

    # api
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    auth: Literal["required", "disabled"] = "required"
    """`required`: every /v1 endpoint needs an API key. `disabled`: requests act as an
    unrestricted admin, for local demos only; the API refuses it unless api_host is loopback."""
    auth_cache_s: float = Field(default=5.0, ge=0, le=300)
    """How long the API trusts a looked-up key: a revocation takes effect within this."""
    ingest_max_events: int = Field(default=1000, ge=1, le=100_000)
    ingest_max_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    ingest_delivery_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """POST /v1/events waits this long for Kafka's acks before answering 503."""

    # alert dispatcher (processors/alerts)
    alert_webhooks: tuple[AlertWebhook, ...] = ()
    """JSON list, e.g. `[{"url": "https://hooks.slack.com/services/...", "format": "slack"}]`."""
    alert_allow_private_destinations: bool = False
    """Allow webhooks on loopback, link-local, private and other non-public addresses. Cloud
    metadata, multicast and unspecified addresses stay refused whatever this says."""
    alert_max_attempts: int = Field(default=5, ge=1, le=20)
    """Attempts per alert and destination, the first included."""
    alert_backoff_initial_s: float = Field(default=0.5, gt=0, le=60)
    alert_backoff_max_s: float = Field(default=30.0, gt=0, le=600)
    alert_retry_after_max_s: float = Field(default=60.0, ge=0, le=600)
    """A 429's Retry-After is honoured up to this; longer waits are cut to it."""
    alert_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Per attempt: connect, write and read each."""

    # local broker (scripts/kafka.sh)
    kafka_home: Path = Path("var/kafka")

    @model_validator(mode="after")
    def _webhooks_allowed(self) -> Settings:
        # Literal addresses and names are checked here; names are resolved (and checked again,
        # then pinned) at every delivery attempt.
        from processors.alerts.destinations import DestinationRefused, check_url

        for index, webhook in enumerate(self.alert_webhooks):
            try:
                check_url(webhook.url, allow_private=self.alert_allow_private_destinations)
            except DestinationRefused as exc:
                hint = " (alert_allow_private_destinations allows it)" if exc.overridable else ""
                raise ValueError(f"alert_webhooks[{index}].url: {exc}{hint}") from None
        return self

    def topic(self, suffix: str) -> str:
        return f"{self.topic_prefix}{suffix}"

    def environment(self, base: Mapping[str, str] | None = None, **overrides: object) -> dict[str, str]:
        """The environment that makes a child process read exactly these settings.

        `base` (default: this process's environment) is kept, minus every variable a setting
        reads, so nothing of the parent's configuration leaks in; every field set here goes
        out, so a new setting can never be forgotten. `overrides` replace fields by name.
        """
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _SETTING_VARIABLES}
        values = self.model_dump(mode="json")
        values.update(overrides)
        for name, value in values.items():
            if value is None:
                continue
            text = json.dumps(value) if isinstance(value, (bool, list, dict)) else str(value)
            env["CLICKHOUSE_URL" if name == "clickhouse_url" else f"AGENTLEDGER_{name.upper()}"] = text
        return env


_SETTING_VARIABLES = frozenset({f"AGENTLEDGER_{name.upper()}" for name in Settings.model_fields} | {"CLICKHOUSE_URL"})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
