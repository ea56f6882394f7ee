"""Money on the wire: Decimal with the warehouse's 12 decimal places, as fixed-point text."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import PlainSerializer

EXPONENT = Decimal("0.000000000001")

MoneyText = Annotated[Decimal, PlainSerializer(lambda v: format(v, "f"), return_type=str, when_used="json")]
"""Never a float, never exponent notation ('0E-12')."""


def money(value: Any) -> Decimal:
    """A warehouse value (Decimal, int, None) as Decimal with 12 places; None is 0."""
    return Decimal(value if value is not None else 0).quantize(EXPONENT)
