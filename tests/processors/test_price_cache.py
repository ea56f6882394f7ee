"""The cached linear list price is calc_price's to the Decimal, over the whole genai-prices catalogue."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import calc_price, data_snapshot
from genai_prices.types import (
    ClauseEquals,
    ModelInfo,
    ModelPrice,
    Provider,
    StartDateConstraint,
    TieredPrices,
    TimeOfDateConstraint,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import processors.pricing
from processors.price_cache import PriceCache, class_counts, linear_price, probe_rates, usage_for
from processors.pricing import price_event
from processors.ratecard import parse_rate_card
from schemas.events import MAX_TOKENS, CostEvent
from tests.processors.conftest import cost_event

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, tzinfo=UTC)
WHEN = datetime(2026, 6, 1, 12, tzinfo=UTC)

# (input excl. cache, cache read, cache write, output excl. reasoning, reasoning)
MIXES = {
    "zero": (0, 0, 0, 0, 0),
    "one each": (1, 1, 1, 1, 1),
    "small": (1234, 0, 0, 567, 0),
    "cache read": (1000, 20_000, 0, 300, 0),
    "cache write": (1000, 0, 4096, 300, 0),
    "cache both": (17, 300_001, 99_999, 5, 0),
    "reasoning": (2000, 0, 0, 150, 3333),
    "huge": (MAX_TOKENS, MAX_TOKENS, MAX_TOKENS, MAX_TOKENS, MAX_TOKENS),
    "odd huge": (98_765_431, 12_345_679, 7, 1, 99_999_999),
}


def _tokens(counts: tuple[int, int, int, int, int]) -> tuple[int, int, int, int, int, bool]:
    """Back to `pricing._tokens_for` order: input, output incl. reasoning, cache read, cache write, reasoning."""
    inp, cr, cw, plain_out, reasoning = counts
    return inp, plain_out + reasoning, cr, cw, reasoning, False


def _versions(model: ModelInfo) -> Iterator[tuple[datetime, ModelPrice]]:
    """One timestamp for every price version of a model (effective dates, times of day)."""
    if isinstance(model.prices, ModelPrice):
        yield WHEN, model.prices
        return
    candidates = [datetime(2000, 1, 1, hour, 45, tzinfo=UTC) for hour in range(24)]
    for conditional in model.prices:
        constraint = conditional.constraint
        if isinstance(constraint, StartDateConstraint):
            candidates += [datetime.combine(constraint.start_date, time(h, 45), tzinfo=UTC) for h in (0, 12)]
        elif isinstance(constraint, TimeOfDateConstraint):
            candidates.append(datetime.combine(date(2026, 6, 1), constraint.start_time).astimezone(UTC))
    seen: dict[int, tuple[datetime, ModelPrice]] = {}
    for when in candidates:
        price = model.get_prices(when)
        seen.setdefault(id(price), (when, price))
    # every version is reachable at one of the candidates: nothing in the catalogue goes untested
    assert {id(c.prices) for c in model.prices} == set(seen), model.id
    yield from seen.values()


def _catalogue() -> list[tuple[Provider, ModelInfo]]:
    return [(provider, model) for provider in data_snapshot.get_snapshot().providers for model in provider.models]


def _is_tiered(price: ModelPrice) -> bool:
    return any(isinstance(value, TieredPrices) for value in vars(price).values())


def _calc(model: ModelInfo, provider: Provider, when: datetime, counts: tuple[int, int, int, int, int]) -> Any:
    try:
        return model.calc_price(usage_for(counts), provider, genai_request_timestamp=when)
    except ValueError as exc:  # genai-prices refuses this usage for this model: so must we
        return exc


def test_every_catalogue_price_version_is_exact_or_refused():
    checked = linear = tiered = 0
    for provider, model in _catalogue():
        for when, price in _versions(model):
            rates = probe_rates(model, provider, price, when)
            if _is_tiered(price):
                assert rates is None, (provider.id, model.id)
                tiered += 1
                continue
            # every untiered price is linear: None here would mean the probes are wrong
            assert rates is not None, (provider.id, model.id, str(price))
            linear += 1
            for name, counts in MIXES.items():
                expected = _calc(model, provider, when, counts)
                got = rates.price(counts)
                if isinstance(expected, ValueError):
                    assert got is None, (provider.id, model.id, name)
                    continue
                assert got is not None, (provider.id, model.id, name)
                assert (got.input_price, got.output_price, got.total_price) == (
                    expected.input_price,
                    expected.output_price,
                    expected.total_price,
                ), (provider.id, model.id, name, str(price))
                checked += 1
    # the catalogue was really walked: thousands of versions, most of them linear
    assert linear > 2000 and tiered > 100 and checked > 15_000, (linear, tiered, checked)


def test_every_catalogue_model_by_id_end_to_end():
    """linear_price resolves (provider id, model ref) and the version in force like calc_price does."""
    snapshot = data_snapshot.get_snapshot()
    fast = 0
    for provider, model in _catalogue():
        try:
            _, found = snapshot.find_provider_model(model.id, None, provider.id, None)
        except LookupError:
            continue
        for when, _ in _versions(found):
            for name, counts in MIXES.items():
                got = linear_price(provider.id, model.id, when, _tokens(counts))
                try:
                    expected = calc_price(
                        usage_for(counts), model.id, provider_id=provider.id, genai_request_timestamp=when
                    )
                except ValueError:
                    assert got is None, (provider.id, model.id, name)
                    continue
                if got is None:
                    assert _is_tiered(expected.model_price), (provider.id, model.id, name)
                    continue
                assert (got.input_price, got.output_price, got.total_price) == (
                    expected.input_price,
                    expected.output_price,
                    expected.total_price,
                ), (provider.id, model.id, name)
                fast += 1
    assert fast > 15_000


SAMPLE = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("openai", "o3"),
    ("openai", "gpt-5"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("anthropic", "claude-opus-4-1"),
    ("google", "gemini-2.5-flash"),
    ("deepseek", "deepseek-chat"),  # off-peak prices by time of day
    ("deepseek", "deepseek-reasoner"),
    ("my-gateway", "gpt-4.1"),  # unknown provider id, known model
    ("azure", "gpt-4o"),
    ("aws", "claude-3-5-sonnet"),
    ("mistral", "mistral-large-latest"),
    ("groq", "llama-3.3-70b-versatile"),
    ("anthropic", "claude-sonnet-4-5"),  # tiered: always calc_price
    ("google", "gemini-2.5-pro"),  # tiered
    ("acme", "acme-9000"),  # unknown
]

counts_strategy = st.integers(0, MAX_TOKENS) | st.integers(0, 5000) | st.just(0)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=st.sampled_from(SAMPLE),
    when=st.datetimes(datetime(2023, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
    inp=counts_strategy,
    cr=counts_strategy,
    cw=counts_strategy,
    out=counts_strategy,
    reasoning_share=st.floats(0, 1),
)
def test_random_counts_equal_calc_price(
    pair: tuple[str, str], when: datetime, inp: int, cr: int, cw: int, out: int, reasoning_share: float
):
    provider, model = pair
    reasoning = int(out * reasoning_share)
    counts = (inp, cr, cw, out - reasoning, reasoning)
    got = linear_price(provider, model, when, _tokens(counts))
    try:
        expected = calc_price(usage_for(counts), model, provider_id=provider, genai_request_timestamp=when)
    except LookupError:
        try:
            expected = calc_price(usage_for(counts), model, genai_request_timestamp=when)
        except LookupError:
            assert got is None
            return
    if _is_tiered(expected.model_price):
        assert got is None
        return
    assert got is not None
    assert (got.input_price, got.output_price, got.total_price) == (
        expected.input_price,
        expected.output_price,
        expected.total_price,
    )


def event(**overrides: Any) -> CostEvent:
    return cost_event(**{"provider": "openai", "model": "gpt-4o", **overrides})


@pytest.mark.parametrize(
    ("provider", "model", "input_tokens"),
    [
        ("google", "gemini-2.5-pro", 1000),
        ("google", "gemini-2.5-pro", 300_000),
        ("anthropic", "claude-sonnet-4-5", 250_000),
    ],
)
def test_tiered_model_falls_back_to_calc_price(provider: str, model: str, input_tokens: int):
    e = event(provider=provider, model=model, input_tokens=input_tokens, cache_read_tokens=100)
    assert linear_price(provider, model, WHEN, (input_tokens, 500, 100, 0, 0, False)) is None
    expected = calc_price(
        usage_for((input_tokens, 100, 0, 500, 0)), model, provider_id=provider, genai_request_timestamp=WHEN
    )
    priced = price_event(e, now=NOW)
    assert (priced.cost, priced.input_cost, priced.output_cost) == (
        expected.input_price + expected.output_price,
        expected.input_price,
        expected.output_price,
    )


def test_price_version_follows_event_time():
    """A price change on a date: the cache picks the version in force for each event, in any order."""
    provider, model = "openai", "gpt-5.5-cyber"  # cache reads priced from 2026-10-19, input rate before
    before = datetime(2026, 10, 18, 23, 59, tzinfo=UTC)
    after = datetime(2026, 10, 19, 0, 1, tzinfo=UTC)
    counts = (1000, 10_000, 0, 100, 0)
    prices = []
    for when in (before, after, before, after):
        got = linear_price(provider, model, when, _tokens(counts))
        expected = calc_price(usage_for(counts), model, provider_id=provider, genai_request_timestamp=when)
        assert got is not None
        assert got.total_price == expected.total_price
        prices.append(got.total_price)
    assert prices[0] == prices[2] != prices[1] == prices[3]


def test_time_of_day_price():
    peak = datetime(2026, 6, 1, 12, tzinfo=UTC)
    off_peak = datetime(2026, 6, 1, 20, tzinfo=UTC)
    got = [linear_price("deepseek", "deepseek-chat", when, (10**6, 0, 0, 0, 0, False)) for when in (peak, off_peak)]
    expected = [
        calc_price(usage_for((10**6, 0, 0, 0, 0)), "deepseek-chat", provider_id="deepseek", genai_request_timestamp=w)
        for w in (peak, off_peak)
    ]
    assert [g.total_price for g in got if g] == [e.total_price for e in expected]
    assert expected[0].total_price != expected[1].total_price


def test_price_event_is_unchanged_by_the_fast_path(monkeypatch: pytest.MonkeyPatch):
    """Whole PricedEvents (rate card, discounts, clamping, call_started, unknown models) with and without it."""
    card = parse_rate_card(
        "version: v1\nmodels:\n  - model: gpt-4o-mini\n    input_mtok: 0.1\n    output_mtok: 0.3\n"
        "discounts:\n  - provider: anthropic\n    model: '*'\n    percent: 12.5\n"
    )
    events = []
    for i, (provider, model) in enumerate(SAMPLE):
        start = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=37 * i, hours=7 * i)
        events += [
            event(provider=provider, model=model, occurred_at=start),
            event(provider=provider, model=model, occurred_at=start, cache_read_tokens=5000, cache_write_tokens=77),
            event(provider=provider, model=model, occurred_at=start, output_tokens=10, reasoning_tokens=50),
            event(provider=provider, model=model, kind="call_started", output_tokens=0, max_output_tokens=4000),
            event(provider=provider, model=model, input_tokens=MAX_TOKENS, output_tokens=MAX_TOKENS),
        ]
    fast = [price_event(e, rate_card=rc, now=NOW) for rc in (None, card) for e in events]
    monkeypatch.setattr(processors.pricing, "linear_price", lambda *_args: None)
    slow = [price_event(e, rate_card=rc, now=NOW) for rc in (None, card) for e in events]
    assert [p.model_dump() for p in fast] == [p.model_dump() for p in slow]


def test_class_counts_match_genai_usage():
    e = event(input_tokens=100, output_tokens=50, cache_read_tokens=7, cache_write_tokens=3, reasoning_tokens=20)
    counts = class_counts(processors.pricing._tokens_for(e))
    assert counts == (100, 7, 3, 30, 20)
    assert usage_for(counts) == processors.pricing.genai_usage(e)


def test_cache_is_bounded_and_forgets_a_replaced_snapshot(monkeypatch: pytest.MonkeyPatch):
    cache = PriceCache(max_models=2)
    for model in ("gpt-4o", "gpt-4o-mini", "o3"):
        assert cache.price("openai", model, WHEN, (1, 0, 0, 1, 0)) is not None
    assert len(cache) == 2

    # genai-prices swaps in new prices (UpdatePrices): the cached rates of the old ones must go
    cheap = ModelInfo(id="gpt-4o", match=ClauseEquals("gpt-4o"), prices=ModelPrice(input_mtok=Decimal("0.001")))
    fake = data_snapshot.DataSnapshot(
        providers=[Provider(id="openai", name="OpenAI", api_pattern="x", models=[cheap])], from_auto_update=True
    )
    monkeypatch.setattr(data_snapshot, "get_snapshot", lambda: fake)
    got = cache.price("openai", "gpt-4o", WHEN, (10**6, 0, 0, 0, 0))
    assert got is not None and got.total_price == Decimal("0.001")
    assert len(cache) == 1
