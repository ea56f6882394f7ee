"""Cost estimates for reservations (`call_started`), behind a small pluggable protocol.

The estimate is advisory: the processors price every event themselves. An estimator that
cannot price a model returns None and the reservation travels without a cost.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from schemas.events import MAX_MONEY

_QUANTUM = Decimal("0.000000000001")


class Estimator(Protocol):
    def __call__(self, provider: str, model: str, input_tokens: int, output_tokens: int) -> Decimal | None:
        """Upper estimate in USD of a call with these token counts, or None if unknown."""
        ...


def genai_prices_estimate(provider: str, model: str, input_tokens: int, output_tokens: int) -> Decimal | None:
    """Price the tokens with genai-prices' bundled price data (no network)."""
    try:
        from genai_prices import Usage, calc_price

        price = calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens), model, provider_id=provider
        ).total_price
    except Exception:
        return None
    return clamp(price)


def clamp(value: Decimal) -> Decimal:
    """Round to the schema's 12 decimal places and bound it by `MAX_MONEY`."""
    return min(max(value, Decimal(0)), MAX_MONEY).quantize(_QUANTUM)
