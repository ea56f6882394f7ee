"""What every provider integration shares: a reservation around one request, a tap on a
streamed response, and the rule that recording never breaks the host's call.

An integration wraps the SDK resource's `_post` (the one method every `create`, `stream`
and `parse` of that resource goes through). Before the request: the session's guard and
`call_started` (a stopped session raises `BudgetExceeded` here, before anything is sent).
After: the usage settles the reservation. A failed request releases it (`call_aborted`). A
stream is tapped in place (same object, same type): its usage events are observed as they
pass, its end settles, and a stream closed early records the tokens seen so far, if any.
Anything that goes wrong in here is logged and counted (`ingest.stats().errors`) and the
provider's response goes back untouched.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol

from ingest import runtime as _rt
from ingest.errors import BudgetExceeded
from ingest.session import LlmCall, Session, Usage, current_session

log = logging.getLogger("agentledger.ingest")

MARK = "_agentledger_instrumented"


class StreamClosed(Exception):
    """Given to the reservation when a stream is closed before its end (never raised)."""


class UsageMissing(Exception):
    """Given to the reservation when a response carried no usage (never raised)."""


def count_error(what: str) -> None:
    """Log and count an integration failure; the host's call goes on."""
    log.warning("agentledger: %s", what, exc_info=True)
    runtime = _rt.current()
    if runtime is not None:
        runtime.stats.add("errors")


@dataclass(frozen=True, slots=True)
class Request:
    """What a reservation needs to know about a request, read from its body."""

    provider: str
    model: str
    max_output_tokens: int
    estimated_input_tokens: int
    streamed: bool


class Tracker:
    """One reserved call: observes usage, then settles or releases it exactly once.

    Only `start()` raises, and only `BudgetExceeded` (or `BudgetPaused`).
    """

    def __init__(self, session: Session, request: Request) -> None:
        self.request = request
        self.call: LlmCall = session.llm_call(
            request.provider,
            request.model,
            max_output_tokens=request.max_output_tokens,
            estimated_input_tokens=request.estimated_input_tokens,
            streamed=request.streamed,
        )
        self.usage: Usage | None = None
        self.model: str | None = None
        self.done = False
        self.injected = False
        """True when the integration asked the provider for usage the caller did not ask for."""

    def start(self) -> None:
        self.call.__enter__()

    def observe(self, usage: Usage | None = None, model: Any = None) -> None:
        if isinstance(model, str) and model:
            self.model = model
        if usage is None:
            return
        self.usage = usage
        try:
            self.call.observe(**{f.name: getattr(usage, f.name) for f in fields(Usage)})
        except Exception:
            count_error("could not note streamed usage")

    def complete(self) -> None:
        """The response is whole: settle with its usage, or release if it had none."""
        if self.done:
            return
        self.done = True
        try:
            if self.usage is None:
                log.warning("agentledger: %s response carried no usage; reservation released", self.request.provider)
                self.call.__exit__(UsageMissing, UsageMissing(), None)
                return
            with contextlib.suppress(BudgetExceeded):  # a stop shows at the session's next call
                self.call.settle(self.usage, model=self.model)
            self.call.__exit__(None, None, None)
        except Exception:
            count_error("could not settle an LLM call")

    def fail(self, exc: BaseException) -> None:
        """The request or its stream failed: record what was seen, else release."""
        if self.done:
            return
        self.done = True
        try:
            self.call.__exit__(type(exc), exc, None)
        except Exception:
            count_error("could not release an LLM call")

    def closed_early(self) -> None:
        self.fail(StreamClosed())


class Adapter(Protocol):
    """One provider's knowledge: which requests to track and where their usage is."""

    def request(self, path: str, body: dict[str, Any], stream: bool) -> Request | None:
        """The reservation for this request, or None to let it pass untracked."""
        ...

    def prepare(self, tracker: Tracker, body: dict[str, Any]) -> dict[str, Any]:
        """The body to send (e.g. asking a stream for its usage); never mutates `body`."""
        ...

    def response(self, tracker: Tracker, path: str, result: Any) -> None:
        """Observe a whole (not streamed) response."""
        ...

    def item(self, tracker: Tracker, path: str, item: Any) -> bool:
        """Observe one streamed item; False hides it from the caller."""
        ...


SessionSource = Callable[[], Session | None]


def session_source(session: Session | None) -> SessionSource:
    """The bound session, else whichever is current when the call is made."""
    return (lambda: session) if session is not None else current_session


def _begin(
    adapter: Adapter, sessions: SessionSource, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Tracker, str] | None:
    """Reserve for this request if it is one to track; may raise `BudgetExceeded` only."""
    try:
        session = sessions()
        if session is None:
            return None
        path = args[0] if args else kwargs.get("path")
        body = kwargs.get("body")
        if not isinstance(path, str) or not isinstance(body, dict):
            return None
        request = adapter.request(path, body, bool(kwargs.get("stream")))
        if request is None:
            return None
        tracker = Tracker(session, request)
    except Exception:
        count_error("could not read a request; it goes on unrecorded")
        return None
    try:
        tracker.start()
    except BudgetExceeded:
        raise
    except Exception:
        count_error("could not reserve an LLM call; it goes on unrecorded")
        return None
    try:
        kwargs["body"] = adapter.prepare(tracker, body)
    except Exception:
        count_error("could not prepare a request; it goes on as given")
    return tracker, path


def _finish(adapter: Adapter, tracker: Tracker, path: str, result: Any) -> Any:
    try:
        parsed = _parsed(result)
        if _is_stream(parsed):
            _tap(adapter, tracker, path, parsed)
            return result
        adapter.response(tracker, path, parsed)
        tracker.complete()
    except Exception:
        count_error("could not read a response's usage")
        tracker.complete()
    return result


def _is_stream(result: Any) -> bool:
    return hasattr(type(result), "__stream__") and hasattr(result, "response")


def _parsed(result: Any) -> Any:
    """`with_raw_response` hands back an unparsed response; its parse is cached, so the
    caller's own `.parse()` later gets the very object observed (or tapped) here."""
    if type(result).__name__ == "LegacyAPIResponse":
        return result.parse()
    return result


def wrap_post(post: Callable[..., Any], adapter: Adapter, sessions: SessionSource) -> Callable[..., Any]:
    """Wrap a resource's `_post` (sync or async) so every tracked request is accounted."""
    if inspect.iscoroutinefunction(post):

        @functools.wraps(post)
        async def apost(*args: Any, **kwargs: Any) -> Any:
            begun = _begin(adapter, sessions, args, kwargs)
            if begun is None:
                return await post(*args, **kwargs)
            tracker, path = begun
            try:
                result = await post(*args, **kwargs)
            except BaseException as exc:
                tracker.fail(exc)
                raise
            return _finish(adapter, tracker, path, result)

        return apost

    @functools.wraps(post)
    def spost(*args: Any, **kwargs: Any) -> Any:
        begun = _begin(adapter, sessions, args, kwargs)
        if begun is None:
            return post(*args, **kwargs)
        tracker, path = begun
        try:
            result = post(*args, **kwargs)
        except BaseException as exc:
            tracker.fail(exc)
            raise
        return _finish(adapter, tracker, path, result)

    return spost


def instrument_resource(resource: Any, adapter: Adapter, sessions: SessionSource) -> None:
    """Wrap one SDK resource object's `_post`, once."""
    if getattr(resource, MARK, False):
        return
    resource._post = wrap_post(resource._post, adapter, sessions)
    setattr(resource, MARK, True)


# -- streams ---------------------------------------------------------------------------


def _see(adapter: Adapter, tracker: Tracker, path: str, item: Any) -> bool:
    try:
        return adapter.item(tracker, path, item)
    except Exception:
        count_error("could not read a streamed event")
        return True


def _tap_sync(inner: Iterator[Any], adapter: Adapter, tracker: Tracker, path: str) -> Iterator[Any]:
    try:
        for item in inner:
            if _see(adapter, tracker, path, item):
                yield item
    except GeneratorExit:
        tracker.closed_early()
        raise
    except BaseException as exc:
        tracker.fail(exc)
        raise
    else:
        tracker.complete()
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


async def _tap_async(inner: AsyncIterator[Any], adapter: Adapter, tracker: Tracker, path: str) -> AsyncIterator[Any]:
    try:
        async for item in inner:
            if _see(adapter, tracker, path, item):
                yield item
    except GeneratorExit:
        tracker.closed_early()
        raise
    except BaseException as exc:
        tracker.fail(exc)
        raise
    else:
        tracker.complete()
    finally:
        aclose = getattr(inner, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


def _tap(adapter: Adapter, tracker: Tracker, path: str, stream: Any) -> None:
    """Observe the stream's items in place: same object, same type for the caller."""
    inner = stream._iterator
    original_close = type(stream).close
    ref = weakref.ref(stream)  # no cycle through the patched close
    if hasattr(inner, "__anext__"):
        stream._iterator = _tap_async(inner, adapter, tracker, path)

        async def aclose() -> None:
            tracker.closed_early()
            target = ref()
            if target is not None:
                await original_close(target)

        stream.close = aclose
    else:
        stream._iterator = _tap_sync(inner, adapter, tracker, path)

        def close() -> None:
            tracker.closed_early()
            target = ref()
            if target is not None:
                original_close(target)

        stream.close = close
