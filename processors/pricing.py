"""Pure pricing: a CostEvent in, a PricedEvent out. No I/O, Decimal throughout.

List prices come from genai-prices at the event's `occurred_at`; the user's rate card wins
where it says so (custom model prices, discounts, tool fees). A model nobody can price is
flagged `unpriced` and follows the configured policy: `fallback` charges the fallback rates
(never a silent $0), `block` charges 0 and the worker kills the session.

genai-prices counts cache reads and writes inside `input_tokens` and reasoning inside
`output_tokens`; our CostEvent.input_tokens excludes cache tokens, so they are added back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

import genai_prices
from genai_prices import Usage, calc_price, data_snapshot

from agentledger.settings import Settings
from processors.price_cache import linear_price
from processors.ratecard import RateCard, load_rate_card
from schemas.events import ADJUSTMENT, CALL_ABORTED, CALL_STARTED, MAX_MONEY, TOOL_CALL, CostEvent, PricedEvent

UnpricedPolicy = Literal["fallback", "block"]

MTOK = Decimal(1_000_000)
QUANTUM = Decimal("1e-12")
ZERO = Decimal(0)
HUNDRED = Decimal(100)

SOURCE_GENAI = "genai-prices"
SOURCE_RATE_CARD = "rate-card"
SOURCE_FALLBACK = "fallback"
SOURCE_REPORTED = "reported"
SOURCE_ESTIMATE = "estimate"
SOURCE_TOOL_FEE = "tool-fee"
SOURCE_ADJUSTMENT = "adjustment"
SOURCE_NONE = "none"


def genai_prices_version() -> str:
    """`genai-prices <version>`, plus the snapshot time when prices were auto-updated."""
    global _last_version
    snap = data_snapshot.get_snapshot()
    last = _last_version
    if last[0] is snap:
        return last[1]  # the snapshot of the last call (genai-prices swaps the object to update)
    version = f"genai-prices {genai_prices.__version__}"
    if snap.from_auto_update:
        version += f"@{snap.timestamp:%Y%m%dT%H%M%S}"
    _last_version = (snap, version)
    return version


_last_version: tuple[object, str] = (None, "")
"""The snapshot `genai_prices_version` last saw and its version, replaced whole (threads read it)."""


class PricingError(ValueError):
    """A computed price the contract cannot carry (beyond ±MAX_MONEY per call): the event is
    dead-lettered with this reason rather than charged a wrong amount."""


_PRICED_FIELDS = (
    "event", "cost", "list_cost", "input_cost", "output_cost", "currency",
    "price_source", "price_version", "unpriced", "late", "clamped", "priced_at",
)  # fmt: skip
"""Every field of PricedEvent, in its order: the keys `price_event` builds, checked once here."""
if tuple(PricedEvent.model_fields) != _PRICED_FIELDS:
    raise TypeError("PricedEvent's fields changed: update _PRICED_FIELDS and price_event's construction")
_set_attribute = object.__setattr__


def _construct_priced(values: dict[str, Any]) -> PricedEvent:
    """`PricedEvent.model_construct(**values)` for every field, in field order (`_PRICED_FIELDS`),
    at a third of its cost: the same four attributes pydantic sets, without its per-field default
    lookups. tests/processors/test_pricing_properties.py checks the result equals a validated
    PricedEvent."""
    event = PricedEvent.__new__(PricedEvent)
    _set_attribute(event, "__dict__", values)
    _set_attribute(event, "__pydantic_fields_set__", set(_PRICED_FIELDS))
    _set_attribute(event, "__pydantic_extra__", None)
    _set_attribute(event, "__pydantic_private__", None)
    return event


MIN_MONEY = -MAX_MONEY


def _money(name: str, value: Decimal) -> Decimal:
    """`value` rounded to the contract's 12 places, checked against SignedMoney's bounds."""
    rounded = value.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)
    if not MIN_MONEY <= rounded <= MAX_MONEY:
        raise PricingError(f"{name} of {rounded} USD is outside the ±{MAX_MONEY} USD one call may cost")
    return rounded


@dataclass(frozen=True, slots=True)
class _Price:
    input_cost: Decimal
    output_cost: Decimal

    @property
    def total(self) -> Decimal:
        return self.input_cost + self.output_cost


def _tokens_for(event: CostEvent) -> tuple[int, int, int, int, int, bool]:
    """(input excl. cache, output, cache read, cache write, reasoning, clamped)."""
    output = event.output_tokens
    if event.kind is CALL_STARTED and event.max_output_tokens is not None:
        output = max(output, event.max_output_tokens)
    reasoning = event.reasoning_tokens
    clamped = reasoning > output
    if clamped:
        reasoning = output
    return event.input_tokens, output, event.cache_read_tokens, event.cache_write_tokens, reasoning, clamped


def genai_usage(event: CostEvent) -> Usage:
    """The genai-prices Usage for an event: cache tokens added back into input_tokens."""
    inp, out, cr, cw, reasoning, _ = _tokens_for(event)
    values: dict[str, int] = {"input_tokens": inp + cr + cw, "output_tokens": out}
    if cr:
        values["cache_read_tokens"] = cr
    if cw:
        values["cache_write_tokens"] = cw
    if reasoning:
        values["output_reasoning_tokens"] = reasoning
    return Usage(**values)


def _genai_price(event: CostEvent, tokens: tuple[int, int, int, int, int, bool]) -> _Price | None:
    """`tokens`: `_tokens_for(event)`."""
    assert event.model is not None
    if (fast := linear_price(event.provider, event.model, event.occurred_at, tokens)) is not None:
        return _Price(fast.input_price, fast.output_price)
    try:
        calc = calc_price(
            genai_usage(event),
            event.model,
            provider_id=event.provider,
            genai_request_timestamp=event.occurred_at,
        )
    except LookupError:
        if event.provider is None:
            return None
        # an unknown provider id (e.g. a gateway) may still name a known model
        try:
            calc = calc_price(genai_usage(event), event.model, genai_request_timestamp=event.occurred_at)
        except LookupError:
            return None
    return _Price(Decimal(calc.input_price), Decimal(calc.output_price))


def _per_mtok(tokens: int, price: Decimal) -> Decimal:
    return Decimal(tokens) * price / MTOK


def _rate_card_price(event: CostEvent, card: RateCard, tokens: tuple[int, int, int, int, int, bool]) -> _Price | None:
    """`tokens`: `_tokens_for(event)`."""
    assert event.model is not None
    rate = card.model_rate(event.provider, event.model)
    if rate is None:
        return None
    inp, out, cr, cw, _, _ = tokens
    cr_price = rate.cache_read_mtok if rate.cache_read_mtok is not None else rate.input_mtok
    cw_price = rate.cache_write_mtok if rate.cache_write_mtok is not None else rate.input_mtok
    input_cost = _per_mtok(inp, rate.input_mtok) + _per_mtok(cr, cr_price) + _per_mtok(cw, cw_price)
    return _Price(input_cost, _per_mtok(out, rate.output_mtok))


def _version(card: RateCard | None, base: str) -> str:
    if card is None:
        return base
    return f"{base}; rc {card.version}"[:64]


def _priced(
    event: CostEvent,
    now: datetime,
    cost: Decimal,
    list_cost: Decimal,
    source: str,
    version: str,
    *,
    input_cost: Decimal = ZERO,
    output_cost: Decimal = ZERO,
    unpriced: bool = False,
    clamped: bool = False,
) -> PricedEvent:
    """The PricedEvent, built without re-validation (a third of pricing's time): `event` is
    validated already, the sources and versions are ours and at most 64 characters, `now` is
    aware UTC, and the amounts are checked here against the bounds SignedMoney would check."""
    rounded = _money("cost", cost)
    return _construct_priced(
        {
            "event": event,
            "cost": rounded,
            "list_cost": rounded if list_cost is cost else _money("list_cost", list_cost),
            "input_cost": _money("input_cost", input_cost),
            "output_cost": _money("output_cost", output_cost),
            "currency": "USD",
            "price_source": source,
            "price_version": version,
            "unpriced": unpriced,
            "late": False,
            "clamped": clamped,
            "priced_at": now,
        }
    )


def _at_list_price(
    event: CostEvent, now: datetime, input_cost: Decimal, output_cost: Decimal, version: str, clamped: bool
) -> PricedEvent:
    """Charged what genai-prices lists: the cost is the list cost."""
    total = input_cost + output_cost
    return _priced(
        event, now, total, total, SOURCE_GENAI, version, input_cost=input_cost, output_cost=output_cost, clamped=clamped
    )


def price_event(
    event: CostEvent,
    *,
    rate_card: RateCard | None = None,
    unpriced_policy: UnpricedPolicy = "fallback",
    fallback_input_per_mtok: Decimal = Decimal(10),
    fallback_output_per_mtok: Decimal = Decimal(30),
    now: datetime,
) -> PricedEvent:
    """Price one event. Pure: the same inputs give the same PricedEvent."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if now.utcoffset():
        now = now.astimezone(UTC)
    gp_version = genai_prices_version()

    kind = event.kind
    if kind is ADJUSTMENT:
        assert event.adjustment_amount is not None
        amount = event.adjustment_amount
        listed_amount = amount if event.adjustment_list_amount is None else event.adjustment_list_amount
        return _priced(event, now, amount, listed_amount, SOURCE_ADJUSTMENT, SOURCE_ADJUSTMENT)

    if kind is TOOL_CALL:
        assert event.tool_name is not None
        card_fee = rate_card.tool_fee(event.tool_name) if rate_card else None
        if card_fee is not None:
            tool_list = event.tool_fee if event.tool_fee is not None else card_fee
            return _priced(event, now, card_fee, tool_list, SOURCE_RATE_CARD, _version(rate_card, SOURCE_RATE_CARD))
        if event.tool_fee is not None:
            return _priced(event, now, event.tool_fee, event.tool_fee, SOURCE_TOOL_FEE, SOURCE_TOOL_FEE)
        # a tool without a fee (a local function) costs nothing: that is a price, not a gap
        return _priced(event, now, ZERO, ZERO, SOURCE_NONE, SOURCE_NONE)

    if kind is CALL_STARTED and event.estimated_cost is not None:
        return _priced(event, now, event.estimated_cost, event.estimated_cost, SOURCE_ESTIMATE, SOURCE_ESTIMATE)

    if kind is CALL_ABORTED and (not event.model or event.total_tokens == 0):
        # nothing was consumed; the reservation it settles is released by the budget
        return _priced(event, now, ZERO, ZERO, SOURCE_NONE, SOURCE_NONE)

    # llm_call, call_started without an estimate, call_aborted that consumed tokens
    assert event.model is not None
    tokens = _tokens_for(event)
    clamped = tokens[5]
    if rate_card is None and (fast := linear_price(event.provider, event.model, event.occurred_at, tokens)):
        # `_genai_price`'s answer and the list-price branch below, without their steps (most events)
        return _at_list_price(event, now, fast.input_price, fast.output_price, gp_version, clamped)
    listed = _genai_price(event, tokens)
    custom = _rate_card_price(event, rate_card, tokens) if rate_card else None
    if custom is not None:
        list_cost = listed.total if listed is not None else custom.total
        return _priced(
            event,
            now,
            custom.total,
            list_cost,
            SOURCE_RATE_CARD,
            _version(rate_card, gp_version if listed else SOURCE_RATE_CARD),
            input_cost=custom.input_cost,
            output_cost=custom.output_cost,
            clamped=clamped,
        )
    if listed is not None:
        percent = rate_card.discount_percent(event.provider, event.model) if rate_card else None
        if percent is not None:
            factor = (HUNDRED - percent) / HUNDRED
            return _priced(
                event,
                now,
                listed.total * factor,
                listed.total,
                SOURCE_RATE_CARD,
                _version(rate_card, gp_version),
                input_cost=listed.input_cost * factor,
                output_cost=listed.output_cost * factor,
                clamped=clamped,
            )
        return _at_list_price(event, now, listed.input_cost, listed.output_cost, gp_version, clamped)

    # nobody knows this model
    if event.reported_cost is not None and kind is not CALL_STARTED:
        return _priced(
            event, now, event.reported_cost, event.reported_cost, SOURCE_REPORTED, SOURCE_REPORTED, clamped=clamped
        )
    if unpriced_policy == "block":
        return _priced(event, now, ZERO, ZERO, SOURCE_NONE, SOURCE_NONE, unpriced=True, clamped=clamped)
    inp, out, cr, cw, _, _ = tokens
    input_cost = _per_mtok(inp + cr + cw, fallback_input_per_mtok)
    output_cost = _per_mtok(out, fallback_output_per_mtok)
    total = input_cost + output_cost
    version = f"fallback {fallback_input_per_mtok}/{fallback_output_per_mtok} per MTok"[:64]
    return _priced(
        event,
        now,
        total,
        total,
        SOURCE_FALLBACK,
        version,
        input_cost=input_cost,
        output_cost=output_cost,
        unpriced=True,
        clamped=clamped,
    )


class Pricer:
    """`price_event` bound to one worker's settings and rate card."""

    def __init__(self, settings: Settings, rate_card: RateCard | None = None) -> None:
        if rate_card is None and settings.rate_card is not None:
            rate_card = load_rate_card(settings.rate_card)
        self.rate_card = rate_card
        self.unpriced_policy: UnpricedPolicy = settings.unpriced_policy
        self.fallback_input = settings.fallback_price_per_mtok_input
        self.fallback_output = settings.fallback_price_per_mtok_output

    def price(self, event: CostEvent, now: datetime) -> PricedEvent:
        return price_event(
            event,
            rate_card=self.rate_card,
            unpriced_policy=self.unpriced_policy,
            fallback_input_per_mtok=self.fallback_input,
            fallback_output_per_mtok=self.fallback_output,
            now=now,
        )
