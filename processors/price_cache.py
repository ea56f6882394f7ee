"""genai-prices list prices without `calc_price` on the hot path, to the same Decimal.

`calc_price` re-resolves, re-validates and re-decomposes the model price on every call. Most
prices are linear in each token class, so this module asks genai-prices once per model price
what one token of each class costs and then multiplies.

What is cached, and why it stays right:

- per (provider, model ref): the `(Provider, ModelInfo)` genai-prices resolves, with the same
  retry `processors.pricing` does (an unknown provider id, e.g. a gateway, may still name a
  known model). Bounded LRU; cleared when genai-prices swaps its data snapshot.
- per price version: `ModelInfo.get_prices(occurred_at)` runs on every event, so effective
  dates and time-of-day prices select the version exactly as `calc_price` does; the rates of
  that `ModelPrice` object are probed once and kept beside it (keyed by identity).
- the rates are what `ModelInfo.calc_price` charges for 1,000,000 tokens of one class alone,
  minus what it charges for nothing (a fixed per-request fee, exact). Each class is checked
  again alone at a second count, and all classes together at two mixed points; any
  difference, a tiered price, or an error marks the version not linear.

`linear_price` answers None whenever it cannot promise calc_price's answer: unknown model,
tiered or not linear price, a token class genai-prices refuses for this model (calc_price
then raises its own error), or counts so large that Decimal arithmetic could round.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, getcontext
from fractions import Fraction

from genai_prices import Usage, data_snapshot
from genai_prices.types import ModelInfo, ModelPrice, PriceCalculation, Provider, TieredPrices

PROBE = 1_000_000
SECOND_PROBE = 7_654_321
# two mixed points: (input excl. cache, cache read, cache write, output excl. reasoning, reasoning)
MIXED_PROBES = ((1, 2, 3, 5, 7), (99_999_989, 12_345_678, 3_000_017, 4_999_999, 77_777_777))
DEFAULT_MAX_MODELS = 4096
UNBOUNDED = 10**100

CLASSES = ("input", "cache_read", "cache_write", "output", "reasoning")


@dataclass(frozen=True, slots=True)
class ListPrice:
    """What `calc_price` would report: input, output and total price in USD."""

    input_price: Decimal
    output_price: Decimal
    total_price: Decimal


@dataclass(frozen=True, slots=True)
class LinearRates:
    """Exact per-token rates of one genai-prices `ModelPrice`, per token class."""

    base_input: Decimal
    base_output: Decimal
    base_other: Decimal
    """Charged once per request and in neither direction (e.g. `requests_kcount`): total only."""
    input_rates: tuple[tuple[int, Decimal], ...]
    """(class index, USD per token) of every class with a non-zero input rate."""
    output_rates: tuple[tuple[int, Decimal], ...]
    unsupported: tuple[int, ...]
    """Classes calc_price refuses for this model: a non-zero count goes to calc_price."""
    max_count: int
    """Counts above this could round in Decimal arithmetic: calc_price decides."""

    def price(self, counts: tuple[int, int, int, int, int]) -> ListPrice | None:
        for index in self.unsupported:
            if counts[index]:
                return None
        if max(counts) > self.max_count:
            return None
        input_price = self.base_input
        for index, rate in self.input_rates:
            if count := counts[index]:
                input_price += rate * count
        output_price = self.base_output
        for index, rate in self.output_rates:
            if count := counts[index]:
                output_price += rate * count
        return ListPrice(input_price, output_price, input_price + output_price + self.base_other)


def class_counts(tokens: tuple[int, int, int, int, int, bool]) -> tuple[int, int, int, int, int]:
    """`processors.pricing._tokens_for` order (input, output, cache read, cache write, reasoning,
    clamped) to disjoint classes (input, cache read, cache write, output excl. reasoning, reasoning)."""
    inp, out, cr, cw, reasoning, _ = tokens
    return inp, cr, cw, out - reasoning, reasoning


def usage_for(counts: tuple[int, int, int, int, int]) -> Usage:
    """The genai-prices Usage of disjoint class counts, built as `pricing.genai_usage` builds it."""
    inp, cr, cw, plain_out, reasoning = counts
    values: dict[str, int] = {"input_tokens": inp + cr + cw, "output_tokens": plain_out + reasoning}
    if cr:
        values["cache_read_tokens"] = cr
    if cw:
        values["cache_write_tokens"] = cw
    if reasoning:
        values["output_reasoning_tokens"] = reasoning
    return Usage(**values)


def _one(index: int, count: int) -> tuple[int, int, int, int, int]:
    counts = [0, 0, 0, 0, 0]
    counts[index] = count
    return counts[0], counts[1], counts[2], counts[3], counts[4]


def _exact_below(amounts: list[Decimal]) -> int:
    """The count below which every product count * rate and every sum of them is exact.

    `amounts` are the per-token rates and the fixed parts (all non-negative). Every partial sum
    is at most count * sum(rates) + sum(fixed) and has no digit below the lowest exponent among
    them, so while that bound stays under 10**(lowest exponent + precision) nothing rounds, in
    this module or inside calc_price (whose per-unit products are the same numbers)."""
    nonzero = [amount.normalize() for amount in amounts if amount]
    if not nonzero:
        return UNBOUNDED
    lowest = min(int(amount.as_tuple().exponent) for amount in nonzero)
    room = Fraction(10) ** (lowest + getcontext().prec)
    # the rates and the fixed parts are not told apart here: counting a fixed part as a rate
    # only lowers the bound
    per_count = sum((Fraction(amount) for amount in nonzero), Fraction(0))
    return -(-room // per_count) - 1  # count * per_count < room


def probe_rates(model: ModelInfo, provider: Provider, model_price: ModelPrice, when: datetime) -> LinearRates | None:
    """Ask genai-prices what each token class costs under `model_price` (the version in force at
    `when`); None if the price is tiered or does not behave linearly at every probe."""
    if any(isinstance(value, TieredPrices) for value in vars(model_price).values()):
        return None

    def calc(counts: tuple[int, int, int, int, int]) -> PriceCalculation:
        result = model.calc_price(usage_for(counts), provider, genai_request_timestamp=when)
        if result.model_price is not model_price:
            raise LookupError("genai-prices resolved another price version")
        return result

    try:
        zero = calc((0, 0, 0, 0, 0))
    except (ValueError, LookupError):
        return None
    base_other = zero.total_price - zero.input_price - zero.output_price
    input_rates: list[tuple[int, Decimal]] = []
    output_rates: list[tuple[int, Decimal]] = []
    unsupported: list[int] = []
    all_rates: list[Decimal] = [zero.input_price, zero.output_price, base_other]
    try:
        for index in range(len(CLASSES)):
            try:
                at_probe = calc(_one(index, PROBE))
            except ValueError:
                unsupported.append(index)
                continue
            rate_in = (at_probe.input_price - zero.input_price) / PROBE
            rate_out = (at_probe.output_price - zero.output_price) / PROBE
            rate_total = (at_probe.total_price - zero.total_price) / PROBE
            if rate_total != rate_in + rate_out:
                return None
            if rate_in:
                input_rates.append((index, rate_in))
            if rate_out:
                output_rates.append((index, rate_out))
            all_rates += [rate_in, rate_out]
        max_count = _exact_below(all_rates)
        rates = LinearRates(
            zero.input_price,
            zero.output_price,
            base_other,
            tuple(input_rates),
            tuple(output_rates),
            tuple(unsupported),
            max_count,
        )
        checks = [_one(index, SECOND_PROBE) for index in range(len(CLASSES)) if index not in unsupported]
        for mixed in MIXED_PROBES:
            kept = [0 if index in unsupported else count for index, count in enumerate(mixed)]
            checks.append((kept[0], kept[1], kept[2], kept[3], kept[4]))
        for counts in checks:
            expected = calc(counts)
            got = rates.price(counts)
            if got is None or (got.input_price, got.output_price, got.total_price) != (
                expected.input_price,
                expected.output_price,
                expected.total_price,
            ):
                return None
    except (ValueError, LookupError):
        return None
    return rates


@dataclass(slots=True)
class _ModelEntry:
    provider: Provider
    model: ModelInfo
    # id(ModelPrice) -> (that ModelPrice, its rates or None when not linear)
    versions: dict[int, tuple[ModelPrice, LinearRates | None]]


_UNKNOWN = object()


class PriceCache:
    """Bounded, thread-safe cache of genai-prices model lookups and per-version linear rates."""

    def __init__(self, max_models: int = DEFAULT_MAX_MODELS) -> None:
        self.max_models = max_models
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple[str | None, str], _ModelEntry | object] = OrderedDict()
        self._snapshot: data_snapshot.DataSnapshot | None = None
        # (provider, model ref) -> rates of a model with one price for all time, or None when
        # they are not linear: read without the lock, `get_prices` and the LRU's bookkeeping
        # skipped (2.9 -> 2.4 us an event in linear_price). Of `_snapshot`, emptied with it.
        self._constant: dict[tuple[str | None, str], LinearRates | None] = {}

    def __len__(self) -> int:
        return len(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self._constant = {}
            self._snapshot = None

    def _entry(self, provider: str | None, model_ref: str) -> _ModelEntry | None:
        snapshot = data_snapshot.get_snapshot()
        key = (provider, model_ref)
        with self._lock:
            if snapshot is not self._snapshot:
                self._models.clear()
                self._constant = {}
                self._snapshot = snapshot
            found = self._models.get(key)
            if found is not None:
                self._models.move_to_end(key)
                return found if isinstance(found, _ModelEntry) else None
        entry = _resolve(snapshot, provider, model_ref)
        with self._lock:
            if snapshot is self._snapshot:
                self._models[key] = _UNKNOWN if entry is None else entry
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
        return entry

    def rates(self, provider: str | None, model_ref: str, when: datetime) -> LinearRates | None:
        """The linear rates in force at `when`, or None (unknown model, tiered or not linear)."""
        key = (provider, model_ref)
        constant = self._constant
        if key in constant and data_snapshot.get_snapshot() is self._snapshot:
            return constant[key]
        entry = self._entry(provider, model_ref)
        if entry is None:
            return None
        model_price = entry.model.get_prices(when)
        version = entry.versions.get(id(model_price))
        if version is None or version[0] is not model_price:
            version = (model_price, probe_rates(entry.model, entry.provider, model_price, when))
            with self._lock:
                entry.versions[id(model_price)] = version
        if isinstance(entry.model.prices, ModelPrice):  # `get_prices` answers it whatever the time
            with self._lock:
                if constant is self._constant and len(constant) < self.max_models:
                    constant[key] = version[1]
        return version[1]

    def price(
        self,
        provider: str | None,
        model_ref: str,
        when: datetime | None,
        counts: tuple[int, int, int, int, int],
    ) -> ListPrice | None:
        """calc_price's input, output and total for disjoint class counts, or None to ask calc_price."""
        rates = self.rates(provider, model_ref, when or datetime.now(tz=UTC))
        return None if rates is None else rates.price(counts)


def _resolve(snapshot: data_snapshot.DataSnapshot, provider: str | None, model_ref: str) -> _ModelEntry | None:
    try:
        found = snapshot.find_provider_model(model_ref, None, provider, None)
    except LookupError:
        if provider is None:
            return None
        try:
            found = snapshot.find_provider_model(model_ref, None, None, None)
        except LookupError:
            return None
    return _ModelEntry(found[0], found[1], {})


_cache = PriceCache()


def linear_price(
    provider: str | None,
    model_ref: str,
    when: datetime | None,
    tokens: tuple[int, int, int, int, int, bool],
) -> ListPrice | None:
    """The genai-prices list price of one call, equal to `calc_price`'s to the Decimal, from rates
    cached per model price version; None when only `calc_price` can say (call it then).

    `tokens` is `processors.pricing._tokens_for(event)`: input excluding cache, output including
    reasoning, cache read, cache write, reasoning, clamped.
    """
    return _cache.price(provider, model_ref, when, class_counts(tokens))
