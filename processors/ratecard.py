"""The user's own rate card: negotiated discounts, custom model prices and tool fees.

A small YAML file that wins over genai-prices where it says so::

    version: "2026-11"            # recorded in every priced event's price_version
    models:                       # custom, self-hosted or negotiated per-token prices (USD per MTok)
      - model: acme-large
        provider: acme            # optional: any provider when absent
        input_mtok: "1.5"
        output_mtok: "6"
        cache_read_mtok: "0.15"   # optional: the input price when absent
        cache_write_mtok: "1.875" # optional: the input price when absent
    discounts:                    # percent off the list price, most specific rule wins
      - provider: openai
        model: "*"
        percent: "20"
    tool_fees:                    # USD per tool call, wins over the fee the hook reports
      web_search: "0.01"

Numbers may be written as YAML numbers or strings; they are read as Decimal, never float.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processors.errors import RateCardError

Price = Annotated[Decimal, Field(ge=0, le=Decimal("1000000"))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRate(_Strict):
    model: str = Field(min_length=1, max_length=128)
    provider: str | None = Field(default=None, max_length=128)
    input_mtok: Price
    output_mtok: Price
    cache_read_mtok: Price | None = None
    cache_write_mtok: Price | None = None


class Discount(_Strict):
    provider: str = Field(default="*", max_length=128)
    model: str = Field(default="*", max_length=128)
    percent: Annotated[Decimal, Field(ge=0, le=100)]


class RateCard(_Strict):
    version: str = Field(default="", max_length=24)
    models: tuple[ModelRate, ...] = ()
    discounts: tuple[Discount, ...] = ()
    tool_fees: dict[str, Price] = Field(default_factory=dict)

    def model_rate(self, provider: str | None, model: str) -> ModelRate | None:
        """The custom price for (provider, model); an entry naming the provider beats one that does not."""
        model_l = model.lower()
        provider_l = (provider or "").lower()
        best: ModelRate | None = None
        for rate in self.models:
            if rate.model.lower() != model_l:
                continue
            if rate.provider is not None and rate.provider.lower() == provider_l:
                return rate
            if rate.provider is None and best is None:
                best = rate
        return best

    def discount_percent(self, provider: str | None, model: str) -> Decimal | None:
        """The most specific discount: provider+model, then model, then provider, then `*`."""
        model_l = model.lower()
        provider_l = (provider or "").lower()
        ranked: list[tuple[int, Decimal]] = []
        for d in self.discounts:
            p_ok = d.provider == "*" or d.provider.lower() == provider_l
            m_ok = d.model == "*" or d.model.lower() == model_l
            if p_ok and m_ok:
                rank = (2 if d.model != "*" else 0) + (1 if d.provider != "*" else 0)
                ranked.append((rank, d.percent))
        if not ranked:
            return None
        return max(ranked, key=lambda r: r[0])[1]

    def tool_fee(self, tool_name: str) -> Decimal | None:
        return self.tool_fees.get(tool_name)


def _decimals(value: Any) -> Any:
    # YAML reads 0.15 as a float; its shortest repr is the decimal the user wrote.
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decimals(v) for v in value]
    return value


def parse_rate_card(text: str) -> RateCard:
    """Parse a rate card from YAML text; its version defaults to a hash of the text."""
    try:
        raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise RateCardError("a rate card is a YAML mapping")
        if "version" in raw and raw["version"] is not None:
            raw["version"] = str(raw["version"])
        card = RateCard.model_validate(_decimals(raw))
    except (yaml.YAMLError, ValidationError) as exc:
        raise RateCardError(f"invalid rate card: {exc}") from exc
    if not card.version:
        card = card.model_copy(update={"version": hashlib.sha256(text.encode()).hexdigest()[:12]})
    return card


def load_rate_card(path: Path) -> RateCard:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RateCardError(f"cannot read rate card {path}: {exc}") from exc
    return parse_rate_card(text)
