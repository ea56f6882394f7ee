"""The cost event contract, version 1.

A cost event records what happened (raw usage), never what it cost: price is derived
downstream and stored beside the event in `PricedEvent`. There is no field for prompt or
completion text, and `extra="forbid"` keeps one from being smuggled in.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

SCHEMA_VERSION: Literal[1] = 1

MAX_TOKENS = 100_000_000
"""Upper bound for any token field of one call; a larger count is a bug, not usage."""
MAX_DURATION_MS = 7 * 24 * 3600 * 1000
MAX_MONEY = Decimal("1000000")
"""Upper bound for one call's reported cost, fee or estimate, in USD."""
MAX_TAGS = 16
MAX_EVENT_BYTES = 16 * 1024
"""An encoded event larger than this is refused: events carry usage, never payloads."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e][\x20-\x7e]*$")]
"""An identifier or attribution value: printable ASCII, no leading blank, at most 128 chars."""
TagKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$")]
TagValue = Annotated[str, StringConstraints(max_length=128)]
EventId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS, strict=True)]
"""A token count: an integer, never a string or a float that looks like one."""
Money = Annotated[Decimal, Field(ge=0, le=MAX_MONEY, max_digits=24, decimal_places=12)]
SignedMoney = Annotated[Decimal, Field(ge=-MAX_MONEY, le=MAX_MONEY, max_digits=24, decimal_places=12)]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""Aware, converted to UTC; in JSON `2026-06-01T12:34:56.123456Z`, without the fraction when it is
zero (pydantic-core's own serializer: a Python serializer per datetime cost 5 % of the worker's CPU).
Every reader takes `Z` and `+00:00` alike (datetime.fromisoformat, pydantic, ClickHouse's best_effort)."""


class EventKind(StrEnum):
    LLM_CALL = "llm_call"
    TOOL_CALL = "tool_call"
    CALL_STARTED = "call_started"
    CALL_ABORTED = "call_aborted"
    ADJUSTMENT = "adjustment"


# The kinds as module names for the per-event paths (validation, pricing, budgets): a member read
# through its class is a descriptor call, 50 ns each, about 0.7 µs an event in all.
LLM_CALL = EventKind.LLM_CALL
TOOL_CALL = EventKind.TOOL_CALL
CALL_STARTED = EventKind.CALL_STARTED
CALL_ABORTED = EventKind.CALL_ABORTED
ADJUSTMENT = EventKind.ADJUSTMENT


def derive_event_id(workflow_id: str, step_idx: int, step_name: str) -> str:
    """The idempotency key of one step of a workflow.

    Deterministic, so a retried step produces the same key and is counted once.
    """
    return hashlib.sha256(f"{workflow_id}:{step_idx}:{step_name}".encode()).hexdigest()[:32]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class CostEvent(Strict):
    """One LLM call, tool call, reservation or adjustment, as the agent saw it."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: EventId
    kind: EventKind
    occurred_at: UtcDatetime
    received_at: UtcDatetime | None = None

    # attribution
    session_id: Name
    thread_id: Name | None = None
    workflow_id: Name
    step: Annotated[int, Field(ge=0, le=10_000_000)]
    step_name: Name
    agent_type: Name
    team: Name | None = None
    project: Name | None = None
    customer: Name | None = None
    tags: Annotated[dict[TagKey, TagValue], Field(max_length=MAX_TAGS)] = Field(default_factory=dict)

    # LLM usage
    provider: Name | None = None
    model: Name | None = None
    input_tokens: Tokens = 0
    """Input tokens billed at the full input rate: cache reads and cache writes excluded."""
    output_tokens: Tokens = 0
    """All output tokens, reasoning tokens included."""
    cache_read_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    reasoning_tokens: Tokens = 0
    """The part of output_tokens spent on reasoning (informational; already in output_tokens)."""
    latency_ms: Annotated[int, Field(ge=0, le=MAX_DURATION_MS)] | None = None
    streamed: bool = False
    cache_hit: bool = False

    # tool usage
    tool_name: Name | None = None
    duration_ms: Annotated[int, Field(ge=0, le=MAX_DURATION_MS)] | None = None
    tool_fee: Money | None = None
    error: bool = False

    # reservations: call_started carries the estimate, settling events name what they settle
    max_output_tokens: Tokens | None = None
    estimated_cost: Money | None = None
    settles: EventId | None = None

    # what the caller says it paid, kept beside the computed cost
    reported_cost: Money | None = None
    # adjustments only: the signed correction, and why
    adjustment_amount: SignedMoney | None = None
    adjustment_list_amount: SignedMoney | None = None
    """The correction to list cost; absent, the same as `adjustment_amount`. A re-pricing under
    a new rate card changes what is paid, not list prices: its adjustments carry 0 here."""
    reason: Annotated[str, StringConstraints(max_length=256)] | None = None

    @model_validator(mode="after")
    def _kind_fields(self) -> Self:
        kind = self.kind
        if kind is LLM_CALL or kind is CALL_STARTED:
            if not self.model:
                raise ValueError(f"model is required for kind={kind.value}")
        elif kind is TOOL_CALL:
            if not self.tool_name:
                raise ValueError("tool_name is required for kind=tool_call")
        elif kind is CALL_ABORTED:
            if not self.settles:
                raise ValueError("settles (the call_started event_id) is required for kind=call_aborted")
        elif kind is ADJUSTMENT:
            if self.adjustment_amount is None or not self.reason:
                raise ValueError("adjustment_amount and reason are required for kind=adjustment")
            return self
        if self.adjustment_amount is not None or self.adjustment_list_amount is not None:
            raise ValueError("adjustment_amount and adjustment_list_amount are only allowed for kind=adjustment")
        return self

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


class PricedEvent(Strict):
    """A cost event with its computed price: what `priced-events` carries and the warehouse stores."""

    event: CostEvent
    cost: SignedMoney
    """Effective cost in USD after the rate card; the figure budgets and chargeback use."""
    list_cost: SignedMoney
    """Cost at the public list price, before negotiated discounts."""
    input_cost: SignedMoney = Decimal(0)
    output_cost: SignedMoney = Decimal(0)
    currency: Literal["USD"] = "USD"
    price_source: Annotated[str, StringConstraints(max_length=64)]
    """Where the price came from: `genai-prices`, `rate-card`, `fallback`, `reported`, `none`."""
    price_version: Annotated[str, StringConstraints(max_length=64)]
    unpriced: bool = False
    late: bool = False
    clamped: bool = False
    priced_at: UtcDatetime


class DeadLetter(Strict):
    """An input the pipeline could not accept, with where it came from and why."""

    topic: str
    partition: int
    offset: int
    reason: Annotated[str, StringConstraints(max_length=4096)]
    error_code: Annotated[str, StringConstraints(max_length=64)]
    payload: str
    """The original bytes, decoded as UTF-8 with replacement, cut to MAX_EVENT_BYTES."""
    failed_at: UtcDatetime


def utcnow() -> datetime:
    return datetime.now(UTC)
