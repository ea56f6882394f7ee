"""Pricing is pure: exact Decimals, genai-prices conventions, rate card precedence, no silent zero."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage, calc_price

from processors.errors import RateCardError
from processors.pricing import genai_prices_version, price_event
from processors.ratecard import parse_rate_card
from schemas.events import CostEvent
from tests.processors.conftest import cost_event

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, tzinfo=UTC)
WHEN = datetime(2026, 6, 1, 12, tzinfo=UTC)


def event(**overrides: Any) -> CostEvent:
    return cost_event(**{"provider": "anthropic", "model": "claude-sonnet-4-5", **overrides})


def test_llm_call_equals_genai_prices():
    priced = price_event(event(), now=NOW)
    expected = calc_price(Usage(input_tokens=1000, output_tokens=500), "claude-sonnet-4-5", provider_id="anthropic")
    assert priced.cost == expected.total_price == Decimal("0.0105")
    assert priced.list_cost == priced.cost
    assert priced.input_cost == expected.input_price
    assert priced.output_cost == expected.output_price
    assert priced.price_source == "genai-prices"
    assert priced.price_version == genai_prices_version()
    assert priced.price_version.startswith("genai-prices ")
    assert priced.unpriced is False


def test_cache_tokens_are_added_back_into_genai_input():
    # our input_tokens excludes cache reads/writes; genai-prices' includes them
    priced = price_event(event(input_tokens=1000, cache_read_tokens=2000, cache_write_tokens=400), now=NOW)
    expected = calc_price(
        Usage(input_tokens=3400, cache_read_tokens=2000, cache_write_tokens=400, output_tokens=500),
        "claude-sonnet-4-5",
        provider_id="anthropic",
    ).total_price
    # 1000 x $3 + 2000 x $0.30 + 400 x $3.75 + 500 x $15, per MTok
    assert priced.cost == expected == Decimal("0.0126")


def test_reasoning_tokens_are_inside_output_tokens():
    plain = price_event(event(provider="openai", model="o3", output_tokens=1000), now=NOW)
    reasoning = price_event(event(provider="openai", model="o3", output_tokens=1000, reasoning_tokens=800), now=NOW)
    expected = calc_price(
        Usage(input_tokens=1000, output_tokens=1000, output_reasoning_tokens=800), "o3", provider_id="openai"
    ).total_price
    assert reasoning.cost == expected == plain.cost
    assert reasoning.clamped is False


def test_reasoning_above_output_is_clamped_not_rejected():
    priced = price_event(event(output_tokens=10, reasoning_tokens=50), now=NOW)
    assert priced.clamped is True
    assert priced.cost == price_event(event(output_tokens=10), now=NOW).cost


def test_price_at_event_time():
    old = price_event(event(occurred_at=datetime(2020, 1, 1, tzinfo=UTC), provider="openai", model="gpt-4o"), now=NOW)
    expected = calc_price(
        Usage(input_tokens=1000, output_tokens=500),
        "gpt-4o",
        provider_id="openai",
        genai_request_timestamp=datetime(2020, 1, 1, tzinfo=UTC),
    ).total_price
    assert old.cost == expected


def test_unknown_model_fallback_is_never_zero():
    priced = price_event(
        event(provider="acme", model="acme-9000", input_tokens=1000, cache_read_tokens=1000, output_tokens=500),
        unpriced_policy="fallback",
        fallback_input_per_mtok=Decimal("10"),
        fallback_output_per_mtok=Decimal("30"),
        now=NOW,
    )
    # 2000 x $10 + 500 x $30 per MTok
    assert priced.cost == Decimal("0.035")
    assert priced.unpriced is True
    assert priced.price_source == "fallback"


def test_unknown_model_block_is_zero_but_flagged():
    priced = price_event(event(provider="acme", model="acme-9000"), unpriced_policy="block", now=NOW)
    assert priced.cost == 0
    assert priced.unpriced is True
    assert priced.price_source == "none"


def test_unknown_model_with_reported_cost_uses_it():
    priced = price_event(
        event(provider="acme", model="acme-9000", reported_cost=Decimal("0.42")), unpriced_policy="block", now=NOW
    )
    assert (priced.cost, priced.price_source, priced.unpriced) == (Decimal("0.42"), "reported", False)


CARD = """
version: "2026-11"
models:
  - model: claude-sonnet-4-5
    provider: anthropic
    input_mtok: 2
    output_mtok: "10"
  - model: acme-large
    input_mtok: 1.5
    output_mtok: 6
    cache_read_mtok: 0.15
discounts:
  - provider: openai
    model: "*"
    percent: 20
  - provider: openai
    model: gpt-4o
    percent: 25
tool_fees:
  web_search: 0.01
"""


def test_rate_card_model_price_wins_over_list_price():
    card = parse_rate_card(CARD)
    priced = price_event(event(), rate_card=card, now=NOW)
    # 1000 x $2 + 500 x $10 per MTok; list price stays genai-prices'
    assert priced.cost == Decimal("0.007")
    assert priced.list_cost == Decimal("0.0105")
    assert priced.price_source == "rate-card"
    assert "rc 2026-11" in priced.price_version


def test_rate_card_custom_model_is_priced_not_unpriced():
    card = parse_rate_card(CARD)
    priced = price_event(
        event(provider="self", model="acme-large", input_tokens=1000, cache_read_tokens=10000, output_tokens=100),
        rate_card=card,
        unpriced_policy="block",
        now=NOW,
    )
    # 1000 x 1.5 + 10000 x 0.15 + 100 x 6, per MTok
    assert priced.cost == priced.list_cost == Decimal("0.0036")
    assert priced.unpriced is False


def test_most_specific_discount_wins():
    card = parse_rate_card(CARD)
    gpt4o = price_event(event(provider="openai", model="gpt-4o"), rate_card=card, now=NOW)
    mini = price_event(event(provider="openai", model="gpt-4o-mini"), rate_card=card, now=NOW)
    assert gpt4o.cost == gpt4o.list_cost * Decimal("0.75")
    assert mini.cost == mini.list_cost * Decimal("0.8")
    assert (
        gpt4o.list_cost
        == calc_price(Usage(input_tokens=1000, output_tokens=500), "gpt-4o", provider_id="openai").total_price
    )


def test_tool_fees():
    card = parse_rate_card(CARD)
    tool = {
        "kind": "tool_call",
        "model": None,
        "provider": None,
        "tool_name": "web_search",
        "tool_fee": Decimal("0.02"),
    }
    assert price_event(event(**tool), now=NOW).cost == Decimal("0.02")
    by_card = price_event(event(**tool), rate_card=card, now=NOW)
    assert (by_card.cost, by_card.list_cost, by_card.price_source) == (Decimal("0.01"), Decimal("0.02"), "rate-card")
    free = price_event(event(kind="tool_call", model=None, tool_name="grep"), now=NOW)
    assert (free.cost, free.unpriced) == (0, False)


def test_call_started_prices_its_estimate():
    given = price_event(event(kind="call_started", estimated_cost=Decimal("0.5")), now=NOW)
    assert (given.cost, given.price_source) == (Decimal("0.5"), "estimate")
    derived = price_event(event(kind="call_started", output_tokens=0, max_output_tokens=4000), now=NOW)
    assert (
        derived.cost
        == calc_price(
            Usage(input_tokens=1000, output_tokens=4000), "claude-sonnet-4-5", provider_id="anthropic"
        ).total_price
    )


def test_abort_and_adjustment():
    aborted = price_event(event(kind="call_aborted", settles="1" * 32, input_tokens=0, output_tokens=0), now=NOW)
    assert aborted.cost == 0
    adj = price_event(
        event(kind="adjustment", model=None, adjustment_amount=Decimal("-1.25"), reason="refund"), now=NOW
    )
    assert (adj.cost, adj.list_cost, adj.price_source) == (Decimal("-1.25"), Decimal("-1.25"), "adjustment")
    discount = price_event(
        event(
            kind="adjustment",
            model=None,
            adjustment_amount=Decimal("-0.5"),
            adjustment_list_amount=Decimal(0),
            reason="negotiated discount applied later",
        ),
        now=NOW,
    )
    assert (discount.cost, discount.list_cost) == (Decimal("-0.5"), Decimal(0))


def test_invalid_rate_card():
    with pytest.raises(RateCardError):
        parse_rate_card("discounts:\n  - percent: 120\n")
    with pytest.raises(RateCardError):
        parse_rate_card("- a list")
