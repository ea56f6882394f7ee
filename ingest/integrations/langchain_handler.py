"""LangChain / LangGraph: a callback handler that records every chat model and tool call.

handler = AgentLedgerCallbackHandler()
graph.invoke(inputs, config={"callbacks": [handler]})
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from ingest.errors import BudgetExceeded
from ingest.integrations.reservation import Request, Tracker, count_error, session_source
from ingest.integrations.usage import add, count, estimate_input_tokens, field, langchain_usage, openai_chat_usage
from ingest.session import Session, Usage


@dataclass(slots=True)
class _ToolRun:
    session: Session
    name: str
    t0: float


class AgentLedgerCallbackHandler(BaseCallbackHandler):
    """Records every chat model call (from its `usage_metadata`) and every tool call.

    Pass it in `config={"callbacks": [handler]}` of any Runnable, agent or LangGraph graph,
    or to a model's `callbacks=`. Calls are recorded under `session`, or, if None, under
    whichever session is current (`with ingest.session(...)`) when the call starts.

    - Chat models: before the call the guard runs and `call_started` reserves the model's
      max tokens (`ls_max_tokens`, else `default_max_output_tokens`); a stopped session raises
      `BudgetExceeded` out of `invoke` before the model is called. The end settles with the
      message's `usage_metadata` (cache reads and writes split out of `input_tokens`,
      reasoning carried over); provider from `ls_provider`, model from the response.
    - Tools: a stopped session raises `BudgetExceeded` before the tool runs; the end records
      `tool_call` with the tool's name, duration and whether it raised.

    Nothing of the prompts, tool inputs or outputs is kept. Recording failures are logged
    and counted, never raised.
    """

    raise_error = True  # only BudgetExceeded ever leaves this handler; LangChain must let it through
    run_inline = True  # cheap and non-blocking: keep the caller's context (its current session)

    def __init__(self, session: Session | None = None, *, default_max_output_tokens: int = 4096) -> None:
        super().__init__()
        self._sessions = session_source(session)
        self.default_max_output_tokens = default_max_output_tokens
        self._lock = threading.Lock()
        self._calls: dict[UUID, Tracker] = {}
        self._tools: dict[UUID, _ToolRun] = {}

    # -- chat models -------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        contents = [field(m, "content") for batch in messages for m in batch]
        self._start(serialized, contents, run_id, metadata, kwargs)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(serialized, list(prompts), run_id, metadata, kwargs)

    def _start(
        self, serialized: Any, contents: list[Any], run_id: UUID, metadata: Mapping[str, Any] | None, extra: Any
    ) -> None:
        try:
            session = self._sessions()
            if session is None:
                return
            meta = metadata or {}
            params = extra.get("invocation_params") or {}
            provider = meta.get("ls_provider") or "unknown"
            model = meta.get("ls_model_name") or params.get("model") or params.get("model_name") or "unknown"
            limit = (
                count(meta, "ls_max_tokens") or count(params, "max_tokens") or count(params, "max_completion_tokens")
            )
            tracker = Tracker(
                session,
                Request(
                    provider=str(provider),
                    model=str(model),
                    max_output_tokens=limit or self.default_max_output_tokens,
                    estimated_input_tokens=estimate_input_tokens(contents),
                    streamed=bool(params.get("stream") or params.get("streaming")),
                ),
            )
        except Exception:
            count_error("could not read a chat model call; it goes on unrecorded")
            return
        try:
            tracker.start()
        except BudgetExceeded:
            raise
        except Exception:
            count_error("could not reserve a chat model call; it goes on unrecorded")
            return
        with self._lock:
            self._calls[run_id] = tracker

    def on_llm_end(self, response: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        with self._lock:
            tracker = self._calls.pop(run_id, None)
        if tracker is None:
            return
        try:
            usage, model = _read_result(response)
            tracker.observe(usage, model)
        except Exception:
            count_error("could not read a chat model's usage")
        tracker.complete()

    def on_llm_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        with self._lock:
            tracker = self._calls.pop(run_id, None)
        if tracker is not None:
            tracker.fail(error)

    # -- tools -------------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            session = self._sessions()
            if session is None:
                return
            name = field(serialized, "name") or kwargs.get("name") or "tool"
        except Exception:
            count_error("could not read a tool call; it goes on unrecorded")
            return
        try:
            session.check()
        except BudgetExceeded:
            raise
        except Exception:
            count_error("could not check the session before a tool call")
        with self._lock:
            self._tools[run_id] = _ToolRun(session, str(name), time.perf_counter())

    def on_tool_end(self, output: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._end_tool(run_id, error=False)

    def on_tool_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._end_tool(run_id, error=True)

    def _end_tool(self, run_id: UUID, *, error: bool) -> None:
        with self._lock:
            run = self._tools.pop(run_id, None)
        if run is None:
            return
        try:
            duration = int((time.perf_counter() - run.t0) * 1000)
            with contextlib.suppress(BudgetExceeded):  # a stop shows at the session's next call
                run.session.record_tool_call(run.name, duration, error=error)
        except Exception:
            count_error("could not record a tool call")


def _read_result(response: Any) -> tuple[Usage | None, str | None]:
    """Usage and model of an `LLMResult`: each message's `usage_metadata`, else `llm_output`."""
    usage: Usage | None = None
    model: str | None = None
    for batch in field(response, "generations") or []:
        for generation in batch:
            message = field(generation, "message")
            metadata = field(message, "usage_metadata")
            if metadata:
                usage = langchain_usage(metadata) if usage is None else add(usage, langchain_usage(metadata))
            meta = field(message, "response_metadata") or {}
            model = model or meta.get("model_name") or meta.get("model")
    output = field(response, "llm_output") or {}
    if usage is None and isinstance(output.get("token_usage"), Mapping):
        usage = openai_chat_usage(output["token_usage"])
    model = model or output.get("model_name") or output.get("model")
    return usage, model if isinstance(model, str) else None
