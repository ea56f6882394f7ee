"""Sessions, reservations and tool spans: what agent code calls."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from ingest import runtime as _rt
from ingest.errors import BudgetExceeded, BudgetPaused, InvalidEvent
from ingest.estimate import genai_prices_estimate
from schemas.budgets import Action, Scope, SessionState
from schemas.events import EventKind, derive_event_id

log = logging.getLogger("agentledger.ingest")

F = TypeVar("F", bound=Callable[..., Any])

LOCAL_CAP_POLICY = "local:token_cap"
_STOPPED = (SessionState.KILLED, SessionState.PAUSED)
"""`policy_id` of a `BudgetExceeded` raised by the session's own `token_cap`."""

_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar("agentledger_session", default=None)


def current_session() -> Session | None:
    """The innermost session opened with `with ingest.session(...)` in this context, if any."""
    return _current.get()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one LLM call, as the provider reported it.

    `input_tokens` excludes cache reads and cache writes; `output_tokens` includes
    reasoning tokens (`reasoning_tokens` says how many of them were reasoning).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


def _tokens(*values: Any) -> int:
    try:
        return sum(int(v) for v in values if v)
    except (TypeError, ValueError):
        return 0


class Session:
    """One agent session: attribution for every event, step numbering, budget guard.

    Open it with `with ingest.session(...) as s:` (or `async with`). Methods are safe to
    call from several threads. Without `ingest.configure()` every method is a no-op.
    """

    def __init__(
        self,
        session_id: str,
        agent_type: str,
        *,
        team: str | None = None,
        project: str | None = None,
        customer: str | None = None,
        thread_id: str | None = None,
        workflow_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        token_cap: int | None = None,
    ) -> None:
        self.session_id = session_id
        self.workflow_id = workflow_id or session_id
        self.token_cap = token_cap
        self._base: dict[str, Any] = {
            "session_id": session_id,
            "thread_id": thread_id,
            "workflow_id": self.workflow_id,
            "agent_type": agent_type,
            "team": team,
            "project": project,
            "customer": customer,
            "tags": dict(tags) if tags else {},
        }
        self._attribution = {
            Scope.SESSION: session_id,
            Scope.AGENT_TYPE: agent_type,
            Scope.TEAM: team,
            Scope.PROJECT: project,
            Scope.CUSTOMER: customer,
        }
        self._lock = threading.Lock()
        self._next_step = 0
        self.used_tokens = 0
        """Tokens recorded by this session in this process (input, output, cache)."""
        self._token: contextvars.Token[Session | None] | None = None

    # -- context management ------------------------------------------------------------

    def __enter__(self) -> Session:
        self._token = _current.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None

    async def __aenter__(self) -> Session:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    # -- steps -------------------------------------------------------------------------

    def next_step(self, step: int | None = None) -> int:
        """Take the next step number, or note an explicit one so later steps follow it."""
        with self._lock:
            if step is None:
                step = self._next_step
            self._next_step = max(self._next_step, step + 1)
            return step

    def event_id(self, step: int, step_name: str, kind: EventKind = EventKind.LLM_CALL) -> str:
        """The idempotency key of a step; reservation events add their kind to the name."""
        if kind in (EventKind.CALL_STARTED, EventKind.CALL_ABORTED):
            step_name = f"{step_name}:{kind.value}"
        return derive_event_id(self.workflow_id, step, step_name)

    def _emit(self, kind: EventKind, step: int, step_name: str, fields: dict[str, Any]) -> str:
        runtime = _rt.current()
        event_id = self.event_id(step, step_name, kind)
        if runtime is None:
            return event_id
        event = {
            **self._base,
            "event_id": event_id,
            "kind": kind,
            "occurred_at": datetime.now(UTC),
            "step": step,
            "step_name": step_name,
            **fields,
        }
        try:
            runtime.submit(event)
        except InvalidEvent:
            raise
        except Exception:
            runtime.stats.add("errors")
            log.exception("agentledger: could not record an event")
        return event_id

    # -- the guard ---------------------------------------------------------------------

    def _guard(self, *, wait: bool = True) -> SessionState:
        """Raise if the session is stopped; hand pending warnings to `on_warn`.

        Before a call starts (`wait=True`), the first guard of the process waits, once and
        briefly, for the session-status snapshot; after a recorded call it never waits.
        """
        runtime = _rt.current()
        if runtime is None:
            return SessionState.ACTIVE
        if wait:
            runtime.wait_ready()
        standing = runtime.guards.get(self.session_id)
        if standing is None or standing.state not in _STOPPED:
            # not stopped itself (yet), but perhaps starting in a team (agent type, ...) that is
            breach = runtime.guards.scope_breach(self._attribution, datetime.now(UTC))
            if breach is not None:
                error = BudgetPaused if breach.action is Action.PAUSE else BudgetExceeded
                raise error.from_signal(breach.model_copy(update={"session_id": self.session_id}))
        if standing is None:
            return SessionState.ACTIVE
        while standing.warnings:
            try:
                signal = standing.warnings.popleft()
            except IndexError:
                break
            if runtime.config.on_warn is not None:
                try:
                    runtime.config.on_warn(signal)
                except Exception:
                    log.exception("agentledger: on_warn callback failed")
        state = standing.state
        if state is SessionState.KILLED or state is SessionState.PAUSED:
            error = BudgetPaused if state is SessionState.PAUSED else BudgetExceeded
            if standing.signal is not None:
                raise error.from_signal(standing.signal)
            raise error(f"session {state.value}", session_id=self.session_id, policy_id="unknown")
        return state

    def _local_cap(self, extra: int) -> None:
        if self.token_cap is not None and (
            self.used_tokens >= self.token_cap or self.used_tokens + extra > self.token_cap
        ):
            raise self._cap_error(extra)

    def _cap_error(self, extra: int) -> BudgetExceeded:
        return BudgetExceeded(
            f"token cap: {self.used_tokens} used + {extra} estimated, cap {self.token_cap}",
            session_id=self.session_id,
            policy_id=LOCAL_CAP_POLICY,
            limit_tokens=self.token_cap,
            spent_tokens=self.used_tokens,
        )

    def check(self) -> SessionState:
        """Ask whether this session may go on; raises `BudgetExceeded` or `BudgetPaused`.

        Returns the session's state as last signalled (`active`, `warned`, `downgraded`).
        Pending warn signals are handed to the `on_warn` callback first. A session whose own
        `token_cap` is used up also raises. Costs no network round trip.
        """
        state = self._guard()
        if self.token_cap is not None and self.used_tokens >= self.token_cap:
            raise self._cap_error(0)
        return state

    def recommended_model(self, default: str) -> str:
        """The model to use next: a downgrade signal's advice, else `default`."""
        runtime = _rt.current()
        if runtime is None:
            return default
        standing = runtime.guards.get(self.session_id)
        if standing is None or standing.recommended_model is None:
            return default
        return standing.recommended_model

    # -- recording ---------------------------------------------------------------------

    def record_llm_call(
        self,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        latency_ms: int | None = None,
        streamed: bool = False,
        step: int | None = None,
        step_name: str | None = None,
        reported_cost: Decimal | None = None,
        *,
        cache_hit: bool = False,
        error: bool = False,
        settles: str | None = None,
    ) -> str:
        """Record one finished LLM call and return its `event_id`.

        Counts as usual: `input_tokens` excludes cache reads and writes, `output_tokens`
        includes reasoning tokens. Pass `step` (and `step_name`) to make a retried step
        reuse its event id; otherwise the session numbers steps itself. Never blocks on the
        network. The call is accounted even when the session was stopped: then this raises
        `BudgetExceeded` (or `BudgetPaused`) after recording.
        """
        step_i = self.next_step(step)
        name = step_name or "llm"
        fields = {
            "provider": provider,
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_tokens": cache_read_tokens,
            "cache_write_tokens": cache_write_tokens,
            "reasoning_tokens": reasoning_tokens,
            "latency_ms": latency_ms,
            "streamed": streamed,
            "cache_hit": cache_hit,
            "error": error,
            "reported_cost": reported_cost,
            "settles": settles,
        }
        event_id = self._emit(EventKind.LLM_CALL, step_i, name, fields)
        used = _tokens(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)
        with self._lock:
            self.used_tokens += used
        self._guard(wait=False)
        return event_id

    def record_tool_call(
        self,
        tool_name: str,
        duration_ms: int,
        fee: Decimal | None = None,
        error: bool = False,
        step: int | None = None,
        step_name: str | None = None,
        reported_cost: Decimal | None = None,
    ) -> str:
        """Record one finished tool call (name, duration, optional provider fee in USD).

        Returns its `event_id`. Like `record_llm_call`, it records first and then raises if
        the session was stopped.
        """
        event_id = self._record_tool(tool_name, duration_ms, fee, error, step, step_name, reported_cost)
        self._guard(wait=False)
        return event_id

    def _record_tool(
        self,
        tool_name: str,
        duration_ms: int,
        fee: Decimal | None,
        error: bool,
        step: int | None,
        step_name: str | None,
        reported_cost: Decimal | None,
    ) -> str:
        step_i = self.next_step(step)
        fields = {
            "tool_name": tool_name,
            "duration_ms": duration_ms,
            "tool_fee": fee,
            "error": error,
            "reported_cost": reported_cost,
        }
        return self._emit(EventKind.TOOL_CALL, step_i, step_name or tool_name, fields)

    def llm_call(
        self,
        provider: str,
        model: str,
        max_output_tokens: int,
        estimated_input_tokens: int = 0,
        *,
        step: int | None = None,
        step_name: str | None = None,
        streamed: bool = False,
    ) -> LlmCall:
        """Reserve budget for an LLM call; use as `with s.llm_call(...) as call:`.

        On entry: refuses (raises `BudgetExceeded`) if the session is stopped or if the
        estimate (`estimated_input_tokens + max_output_tokens`) alone would cross the
        session's `token_cap`; else publishes `call_started` with the estimated cost. In the
        block, call the provider, then `call.settle(...)` with its usage. An exception or a
        cancellation publishes `call_aborted`, or, if `call.observe(...)` saw tokens already
        (a cut stream), an `llm_call` with those tokens and `error=True`.
        """
        return LlmCall(self, provider, model, max_output_tokens, estimated_input_tokens, step, step_name, streamed)

    def tool(self, name: str, *, fee: Decimal | None = None, step_name: str | None = None) -> ToolSpan:
        """Time a tool call: `with s.tool("search") as t:` or `@s.tool("search")`.

        Records `tool_call` with the duration, the fee (set it later with `t.fee = ...`)
        and `error=True` if the block raised. Refuses to start when the session is stopped.
        """
        return ToolSpan(name, fee=fee, step_name=step_name, session=self)


class LlmCall:
    """A reserved LLM call; see `Session.llm_call`."""

    def __init__(
        self,
        session: Session,
        provider: str,
        model: str,
        max_output_tokens: int,
        estimated_input_tokens: int,
        step: int | None,
        step_name: str | None,
        streamed: bool,
    ) -> None:
        self.session = session
        self.provider = provider
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.estimated_input_tokens = estimated_input_tokens
        self._step = step
        self.step_name = step_name or "llm"
        self.streamed = streamed
        self.step: int | None = None
        self.started_event_id: str | None = None
        self.estimated_cost: Decimal | None = None
        self.settled = False
        self.event_id: str | None = None
        """The settling event's id, once settled."""
        self._partial = Usage()
        self._t0 = 0.0

    def __enter__(self) -> LlmCall:
        s = self.session
        s._guard()
        s._local_cap(_tokens(self.estimated_input_tokens, self.max_output_tokens))
        runtime = _rt.current()
        estimator = (runtime.config.estimator if runtime else None) or genai_prices_estimate
        if runtime is not None:
            try:
                self.estimated_cost = estimator(
                    self.provider, self.model, self.estimated_input_tokens, self.max_output_tokens
                )
            except Exception:
                log.warning("agentledger: cost estimator failed", exc_info=True)
        self.step = s.next_step(self._step)
        self.started_event_id = s._emit(
            EventKind.CALL_STARTED,
            self.step,
            self.step_name,
            {
                "provider": self.provider,
                "model": self.model,
                "input_tokens": self.estimated_input_tokens,
                "max_output_tokens": self.max_output_tokens,
                "estimated_cost": self.estimated_cost,
                "streamed": self.streamed,
            },
        )
        self._t0 = time.perf_counter()
        return self

    def observe(
        self,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_read_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        reasoning_tokens: int | None = None,
    ) -> None:
        """Note usage seen so far (running totals, e.g. while a stream is read).

        If the call then fails or is cancelled, these tokens are recorded, not lost.
        """
        p = self._partial
        self._partial = Usage(
            p.input_tokens if input_tokens is None else input_tokens,
            p.output_tokens if output_tokens is None else output_tokens,
            p.cache_read_tokens if cache_read_tokens is None else cache_read_tokens,
            p.cache_write_tokens if cache_write_tokens is None else cache_write_tokens,
            p.reasoning_tokens if reasoning_tokens is None else reasoning_tokens,
        )

    def settle(
        self,
        usage: Usage | None = None,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_read_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        reasoning_tokens: int | None = None,
        reported_cost: Decimal | None = None,
        cache_hit: bool = False,
        model: str | None = None,
    ) -> str:
        """Record the call's actual usage, settling the reservation; returns the event id.

        Pass a `Usage` or the token counts (keywords override the `Usage`). `model` is the
        model the provider says answered, if it differs. Raises `BudgetExceeded` after
        recording if the session was stopped meanwhile.
        """
        if self.settled:
            log.warning("agentledger: llm_call settled twice; the second usage is ignored")
            return self.event_id or ""
        given = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_tokens": cache_read_tokens,
            "cache_write_tokens": cache_write_tokens,
            "reasoning_tokens": reasoning_tokens,
        }
        if usage is not None:
            given = {k: getattr(usage, k) if v is None else v for k, v in given.items()}
        self.observe(**given)
        self.settled = True
        self.event_id = self._record(error=False, reported_cost=reported_cost, cache_hit=cache_hit, model=model)
        return self.event_id

    def _record(
        self, *, error: bool, reported_cost: Decimal | None = None, cache_hit: bool = False, model: str | None = None
    ) -> str:
        u = self._partial
        assert self.step is not None
        return self.session.record_llm_call(
            self.provider,
            model or self.model,
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens,
            u.reasoning_tokens,
            latency_ms=int((time.perf_counter() - self._t0) * 1000),
            streamed=self.streamed,
            step=self.step,
            step_name=self.step_name,
            reported_cost=reported_cost,
            cache_hit=cache_hit,
            error=error,
            settles=self.started_event_id,
        )

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self.settled or self.step is None:
            return
        self.settled = True
        u = self._partial
        if exc_type is not None and _tokens(u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens):
            # the block's own exception goes on; a stop shows at the next guarded call
            with contextlib.suppress(BudgetExceeded):
                self._record(error=True)
            return
        if exc_type is None:
            log.warning("agentledger: llm_call block ended without settle(); recorded as aborted")
        reason = "not settled" if exc_type is None else f"exception: {exc_type.__name__}"
        self.session._emit(
            EventKind.CALL_ABORTED,
            self.step,
            self.step_name,
            {"provider": self.provider, "model": self.model, "settles": self.started_event_id, "reason": reason},
        )

    async def __aenter__(self) -> LlmCall:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)


class ToolSpan:
    """Times one tool call; a context manager, and a decorator that times every call.

    Bound to a session, or (from `ingest.tool`) to whichever session is current when the
    tool runs; with no session it only runs the tool.
    """

    def __init__(
        self,
        name: str,
        *,
        fee: Decimal | None = None,
        step_name: str | None = None,
        session: Session | None = None,
    ) -> None:
        self.name = name
        self.fee = fee
        self.step_name = step_name
        self._session = session
        self._active: Session | None = None
        self._t0 = 0.0
        self.event_id: str | None = None

    def __enter__(self) -> ToolSpan:
        self._active = self._session or current_session()
        if self._active is not None:
            self._active._guard()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        session, self._active = self._active, None
        if session is None:
            return
        duration = int((time.perf_counter() - self._t0) * 1000)
        self.event_id = session._record_tool(
            self.name, duration, self.fee, exc_type is not None, None, self.step_name, None
        )
        if exc_type is None:
            session._guard(wait=False)

    async def __aenter__(self) -> ToolSpan:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)

    def _fresh(self) -> ToolSpan:
        return ToolSpan(self.name, fee=self.fee, step_name=self.step_name, session=self._session)

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async with self._fresh():
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]
