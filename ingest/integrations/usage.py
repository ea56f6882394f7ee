"""Provider usage objects -> `Usage`, in the event contract's terms. Pure functions.

The contract: `input_tokens` excludes cache reads and cache writes, `output_tokens`
includes reasoning tokens, `reasoning_tokens` is the informational subset. Every reader
takes an SDK model, a dict, or None, and treats a missing or odd field as zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ingest.session import Usage


def field(obj: Any, name: str) -> Any:
    """`obj.name` or `obj[name]`, None when absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def count(obj: Any, name: str) -> int:
    """A non-negative token count, 0 when absent or not a number."""
    value = field(obj, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(int(value), 0)


def openai_chat_usage(usage: Any) -> Usage:
    """Chat Completions `usage`: prompt_tokens includes the cached and cache-written tokens."""
    prompt = field(usage, "prompt_tokens_details")
    completion = field(usage, "completion_tokens_details")
    cache_read = count(prompt, "cached_tokens")
    cache_write = count(prompt, "cache_write_tokens")
    return Usage(
        input_tokens=max(count(usage, "prompt_tokens") - cache_read - cache_write, 0),
        output_tokens=count(usage, "completion_tokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=count(completion, "reasoning_tokens"),
    )


def openai_responses_usage(usage: Any) -> Usage:
    """Responses API `usage`: input_tokens includes the cached and cache-written tokens."""
    details_in = field(usage, "input_tokens_details")
    details_out = field(usage, "output_tokens_details")
    cache_read = count(details_in, "cached_tokens")
    cache_write = count(details_in, "cache_write_tokens")
    return Usage(
        input_tokens=max(count(usage, "input_tokens") - cache_read - cache_write, 0),
        output_tokens=count(usage, "output_tokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=count(details_out, "reasoning_tokens"),
    )


def anthropic_usage(usage: Any) -> Usage:
    """Anthropic `usage`: input_tokens already excludes cache reads and writes."""
    return Usage(
        input_tokens=count(usage, "input_tokens"),
        output_tokens=count(usage, "output_tokens"),
        cache_read_tokens=count(usage, "cache_read_input_tokens"),
        cache_write_tokens=count(usage, "cache_creation_input_tokens"),
    )


def langchain_usage(usage_metadata: Any) -> Usage:
    """LangChain `usage_metadata`: input_tokens is the sum of every input kind, cache included."""
    details_in = field(usage_metadata, "input_token_details")
    details_out = field(usage_metadata, "output_token_details")
    cache_read = count(details_in, "cache_read")
    cache_write = count(details_in, "cache_creation")
    return Usage(
        input_tokens=max(count(usage_metadata, "input_tokens") - cache_read - cache_write, 0),
        output_tokens=count(usage_metadata, "output_tokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=count(details_out, "reasoning"),
    )


def add(a: Usage, b: Usage) -> Usage:
    return Usage(
        a.input_tokens + b.input_tokens,
        a.output_tokens + b.output_tokens,
        a.cache_read_tokens + b.cache_read_tokens,
        a.cache_write_tokens + b.cache_write_tokens,
        a.reasoning_tokens + b.reasoning_tokens,
    )


def estimate_input_tokens(*parts: Any, budget: int = 2000) -> int:
    """A rough input-token estimate for a reservation: characters of text / 4.

    Walks at most `budget` values of the request's messages; the text is only measured,
    never kept or copied.
    """
    chars = 0
    stack = list(parts)
    seen = 0
    while stack and seen < budget:
        item = stack.pop()
        seen += 1
        if isinstance(item, str):
            chars += min(len(item), 200_000)  # an inline image or file is not worth millions
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return chars // 4
