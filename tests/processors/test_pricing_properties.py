"""Property tests of pricing (processors/pricing.py, ratecard.py) over random usage and prices.

For every token count and every rate card price: the cost is the plain Decimal arithmetic
of the card, at exactly 12 places, never negative; more usage never costs less; a discount
never raises the price; an unknown model is never free under `fallback`; and pricing is a
pure function of its inputs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.pricing import PricingError, price_event
from processors.ratecard import Discount, ModelRate, RateCard
from schemas.events import MAX_MONEY, MAX_TOKENS, CostEvent, PricedEvent
from tests.processors.conftest import cost_event

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, tzinfo=UTC)
WHEN = datetime(2026, 6, 1, 12, tzinfo=UTC)
Q = Decimal("1e-12")

tokens = st.integers(0, MAX_TOKENS)
small_tokens = st.integers(0, 2_000_000)
prices = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)
percents = st.decimals(min_value=0, max_value=100, places=3, allow_nan=False, allow_infinity=False)


def event(**overrides: Any) -> CostEvent:
    return cost_event(**{"provider": "acme", "model": "acme-large", **overrides})


def card(input_mtok: Decimal, output_mtok: Decimal, cache_read_mtok: Decimal | None = None) -> RateCard:
    return RateCard(
        version="prop",
        models=(
            ModelRate(
                model="acme-large", input_mtok=input_mtok, output_mtok=output_mtok, cache_read_mtok=cache_read_mtok
            ),
        ),
    )


@given(tokens, tokens, tokens, tokens, prices, prices, st.none() | prices)
def test_rate_card_cost_is_the_cards_arithmetic_to_12_places(
    inp: int,
    out: int,
    cache_read: int,
    cache_write: int,
    in_price: Decimal,
    out_price: Decimal,
    cr_price: Decimal | None,
) -> None:
    priced = price_event(
        event(input_tokens=inp, output_tokens=out, cache_read_tokens=cache_read, cache_write_tokens=cache_write),
        rate_card=card(in_price, out_price, cr_price),
        now=NOW,
    )
    read = in_price if cr_price is None else cr_price
    exact = (inp * in_price + cache_read * read + cache_write * in_price + out * out_price) / Decimal(1_000_000)
    assert priced.cost == exact.quantize(Q, rounding=ROUND_HALF_EVEN)
    assert priced.cost >= 0 and priced.cost.as_tuple().exponent >= -12
    assert priced.price_source == "rate-card" and not priced.unpriced
    # the parts are rounded on their own: they add up to the cost within one unit of rounding each
    assert abs(priced.input_cost + priced.output_cost - priced.cost) <= 2 * Q
    # built without validation, the priced event is one validation accepts unchanged
    assert PricedEvent.model_validate(priced.model_dump()) == priced


@given(st.integers(1, MAX_TOKENS), st.decimals(min_value=1, max_value=1_000_000, places=3))
def test_a_price_the_contract_cannot_carry_is_an_error_never_a_wrong_amount(count: int, per_mtok: Decimal) -> None:
    try:
        priced = price_event(event(input_tokens=count, output_tokens=0), rate_card=card(per_mtok, per_mtok), now=NOW)
    except PricingError as exc:
        assert count * per_mtok / Decimal(1_000_000) > MAX_MONEY
        assert "cost" in str(exc) and str(MAX_MONEY) in str(exc)
    else:
        assert priced.cost == (count * per_mtok / Decimal(1_000_000)).quantize(Q, rounding=ROUND_HALF_EVEN)
        assert priced.cost <= MAX_MONEY


def test_pricing_refuses_a_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        price_event(event(), now=datetime(2026, 1, 1))


@given(small_tokens, small_tokens, small_tokens, small_tokens, prices, prices, st.sampled_from(["card", "fallback"]))
def test_more_usage_never_costs_less(
    a: int, b: int, extra_in: int, extra_out: int, p_in: Decimal, p_out: Decimal, how: str
) -> None:
    rate_card = card(p_in, p_out) if how == "card" else None
    model = "acme-large" if how == "card" else "nobody-knows-this-model"

    def cost(inp: int, out: int) -> Decimal:
        return price_event(event(model=model, input_tokens=inp, output_tokens=out), rate_card=rate_card, now=NOW).cost

    assert cost(a + extra_in, b + extra_out) >= cost(a, b)


@given(st.integers(1, MAX_TOKENS), tokens, st.sampled_from(["mystery", "acme", None]))
def test_an_unknown_model_is_never_free_under_fallback(inp: int, out: int, provider: str | None) -> None:
    priced = price_event(
        event(provider=provider, model="nobody-knows-this-model", input_tokens=inp, output_tokens=out), now=NOW
    )
    assert priced.unpriced and priced.cost > 0
    assert priced.cost == ((inp * Decimal(10) + out * Decimal(30)) / Decimal(1_000_000)).quantize(Q)
    blocked = price_event(
        event(provider=provider, model="nobody-knows-this-model", input_tokens=inp, output_tokens=out),
        unpriced_policy="block",
        now=NOW,
    )
    assert blocked.unpriced and blocked.cost == 0


@given(small_tokens, small_tokens, percents, st.sampled_from(["gpt-4o", "gpt-4o-mini", "gpt-4.1"]))
def test_a_discount_is_its_percentage_of_the_list_price(inp: int, out: int, percent: Decimal, model: str) -> None:
    rate_card = RateCard(version="d", discounts=(Discount(provider="openai", model="*", percent=percent),))
    e = event(provider="openai", model=model, input_tokens=inp, output_tokens=out)
    listed = price_event(e, now=NOW)
    discounted = price_event(e, rate_card=rate_card, now=NOW)
    assert discounted.list_cost == listed.cost
    assert discounted.cost <= discounted.list_cost
    exact = listed.cost * (100 - percent) / 100
    # the list price is rounded before the discount applies: at most one unit apart
    assert abs(discounted.cost - exact) <= Q


@given(small_tokens, small_tokens, small_tokens, prices, prices)
def test_pricing_is_a_pure_function(inp: int, out: int, cache_read: int, p_in: Decimal, p_out: Decimal) -> None:
    e = event(input_tokens=inp, output_tokens=out, cache_read_tokens=cache_read)
    rate_card = card(p_in, p_out)
    assert price_event(e, rate_card=rate_card, now=NOW) == price_event(e, rate_card=rate_card, now=NOW)


@given(st.sampled_from(["web_search", "code_exec"]), prices, st.none() | prices)
def test_a_rate_card_tool_fee_wins_over_the_reported_fee(
    tool: str, card_fee: Decimal, reported: Decimal | None
) -> None:
    rate_card = RateCard(version="t", tool_fees={tool: card_fee})
    priced = price_event(
        event(
            kind="tool_call",
            tool_name=tool,
            model=None,
            provider=None,
            input_tokens=0,
            output_tokens=0,
            tool_fee=reported,
        ),
        rate_card=rate_card,
        now=NOW,
    )
    assert priced.cost == card_fee
    assert priced.list_cost == (reported if reported is not None else card_fee)
