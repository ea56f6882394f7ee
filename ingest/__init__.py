"""agentledger's SDK hook: account every LLM and tool call of an agent, obey its budgets.

    import ingest

    ingest.configure(bootstrap_servers="127.0.0.1:19092")        # or AGENTLEDGER_* variables
    with ingest.session(session_id="s-1", agent_type="pr-reviewer", team="platform") as s:
        s.record_llm_call("openai", "gpt-4o", input_tokens=1200, output_tokens=300)

Importing costs nothing and starts nothing. Until `configure()` is called every function
is a no-op that never fails. Recording appends to a bounded in-memory queue and returns; a
daemon thread writes events to a local spool and delivers them to Kafka; when Kafka is down
they wait in the spool (it survives restarts) and are replayed later. The only exceptions
raised into agent code on purpose are `BudgetExceeded` and `BudgetPaused` (and, in
development mode only, `InvalidEvent`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest import runtime as _runtime
from ingest.config import IngestConfig, Mode, Transport, build_config
from ingest.errors import AgentLedgerError, BudgetExceeded, BudgetPaused, InvalidEvent
from ingest.session import LOCAL_CAP_POLICY, LlmCall, Session, ToolSpan, Usage, current_session
from ingest.stats import IngestStats

if TYPE_CHECKING:
    from ingest.estimate import Estimator
    from schemas.budgets import Signal

__all__ = [
    "LOCAL_CAP_POLICY",
    "AgentLedgerError",
    "BudgetExceeded",
    "BudgetPaused",
    "IngestConfig",
    "IngestStats",
    "InvalidEvent",
    "LlmCall",
    "Session",
    "ToolSpan",
    "Usage",
    "close",
    "configure",
    "current_session",
    "flush",
    "is_configured",
    "session",
    "stats",
    "tool",
]


def configure(
    bootstrap_servers: str | None = None,
    topic_prefix: str | None = None,
    spool_dir: str | Path | None = None,
    queue_size: int | None = None,
    mode: Mode | None = None,
    on_warn: Callable[[Signal], Any] | None = None,
    *,
    spool_max_events: int | None = None,
    spool_max_bytes: int | None = None,
    max_in_flight: int | None = None,
    linger_ms: int | None = None,
    listen_signals: bool | None = None,
    status_wait_s: float | None = None,
    exit_timeout_s: float | None = None,
    estimator: Estimator | None = None,
    producer_config: Mapping[str, Any] | None = None,
    consumer_config: Mapping[str, Any] | None = None,
    transport: Transport | None = None,
    api_url: str | None = None,
    api_key: str | None = None,
    http_batch_size: int | None = None,
    http_max_bytes: int | None = None,
    http_timeout_s: float | None = None,
) -> IngestConfig:
    """Turn the hook on for this process (call once, at start-up); returns the config in force.

    Every argument left out falls back to its environment variable, then to a default:
    `AGENTLEDGER_KAFKA_BOOTSTRAP` (127.0.0.1:19092), `AGENTLEDGER_TOPIC_PREFIX`
    (agentledger.), `AGENTLEDGER_SPOOL_DIR` (~/.local/state/agentledger/spool),
    `AGENTLEDGER_QUEUE_SIZE` (10000), `AGENTLEDGER_MODE` (production),
    `AGENTLEDGER_SPOOL_MAX_EVENTS` (1,000,000), `AGENTLEDGER_SPOOL_MAX_BYTES` (1 GiB),
    `AGENTLEDGER_LISTEN_SIGNALS` (true), `AGENTLEDGER_TRANSPORT` (kafka),
    `AGENTLEDGER_API_URL`, `AGENTLEDGER_API_KEY`, `AGENTLEDGER_HTTP_BATCH_SIZE` (500).

    - `transport="http"` posts events to the API's `POST /v1/events` (`api_url`, and
      `api_key` with the `ingest` scope) instead of producing to Kafka, for agents that
      cannot reach Kafka: same spool, same event ids. Budget signals then come from the API's
      `GET /v1/signals/stream` (server-sent events; the key needs no team restriction).

    - `mode="development"` validates every event at the call site and raises
      `InvalidEvent`; `"production"` counts and logs invalid events instead.
    - `on_warn(signal)` is called with each warn signal of a session, in the agent's thread,
      at that session's next guarded call.
    - `estimator(provider, model, input_tokens, output_tokens) -> Decimal | None` prices
      reservations; the default uses genai-prices' bundled data.

    Calling it again replaces the previous configuration (after flushing it). It starts a
    delivery thread and, unless `listen_signals=False`, a signal listener; neither blocks.
    Bad arguments raise `ValueError` here, once, at start-up.
    """
    config = build_config(
        {
            "bootstrap_servers": bootstrap_servers,
            "topic_prefix": topic_prefix,
            "spool_dir": spool_dir,
            "queue_size": queue_size,
            "mode": mode,
            "on_warn": on_warn,
            "spool_max_events": spool_max_events,
            "spool_max_bytes": spool_max_bytes,
            "max_in_flight": max_in_flight,
            "linger_ms": linger_ms,
            "listen_signals": listen_signals,
            "status_wait_s": status_wait_s,
            "exit_timeout_s": exit_timeout_s,
            "estimator": estimator,
            "producer_config": producer_config,
            "consumer_config": consumer_config,
            "transport": transport,
            "api_url": api_url,
            "api_key": api_key,
            "http_batch_size": http_batch_size,
            "http_max_bytes": http_max_bytes,
            "http_timeout_s": http_timeout_s,
        }
    )
    _runtime.install(config)
    return config


def is_configured() -> bool:
    """True once `configure()` has been called (and `close()` has not)."""
    return _runtime.armed()


def session(
    session_id: str,
    agent_type: str,
    team: str | None = None,
    project: str | None = None,
    customer: str | None = None,
    thread_id: str | None = None,
    workflow_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    token_cap: int | None = None,
) -> Session:
    """Open a session: `with ingest.session(session_id=..., agent_type=...) as s:`.

    Every event recorded through `s` carries this attribution. `workflow_id` (default: the
    session id) and each event's step number make its `event_id`, so a process that replays
    the same workflow with the same steps produces the same ids and is counted once; give a
    fresh `workflow_id` for new work. `token_cap` lets the session refuse, locally and
    without a network round trip, an `llm_call` whose estimate would cross it.
    """
    return Session(
        session_id,
        agent_type,
        team=team,
        project=project,
        customer=customer,
        thread_id=thread_id,
        workflow_id=workflow_id,
        tags=tags,
        token_cap=token_cap,
    )


def tool(name: str, *, fee: Decimal | None = None, step_name: str | None = None) -> ToolSpan:
    """Time a tool call under whichever session is current when it runs.

    `@ingest.tool("search")` on a function (sync or async), or `with ingest.tool("search"):`.
    Outside any session the tool simply runs.
    """
    return ToolSpan(name, fee=fee, step_name=step_name)


def flush(timeout: float = 5.0) -> bool:
    """Wait until every recorded event is acknowledged by Kafka; False if `timeout` ran out.

    Events not delivered in time are not lost: they stay in the spool.
    """
    runtime = _runtime.peek()
    return True if runtime is None else runtime.flush(timeout)


def close(timeout: float = 5.0) -> bool:
    """Deliver what can be delivered within `timeout`, then stop the hook's threads.

    What is left stays in the spool for the next process. Recording afterwards is a no-op
    until `configure()` is called again. Runs by itself at interpreter exit.
    """
    return _runtime.uninstall(timeout)


def stats() -> IngestStats:
    """Counters since `configure()`: recorded, delivered, spooled, replayed, dropped, invalid..."""
    runtime = _runtime.peek()
    return IngestStats() if runtime is None else runtime.snapshot()
