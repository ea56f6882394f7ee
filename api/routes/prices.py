"""/v1/prices: the price catalogue in force, genai-prices under the user's rate card.

Each entry gives the list price per million tokens (genai-prices at `at`, default now) and
the effective price after the rate card: a rate-card model price wins, else a discount
applies to the list price. `price_version` is what priced events record in theirs.
Tiered prices (a higher rate above a context size) are shown at their base tier.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from genai_prices import data_snapshot
from pydantic import BaseModel

from api.admin_queries import utc_in_range
from api.auth import require
from api.errors import InvalidParameter
from api.keys import ApiKey
from processors.errors import RateCardError
from processors.pricing import HUNDRED, genai_prices_version
from processors.ratecard import RateCard, load_rate_card

router = APIRouter(prefix="/v1", tags=["prices"])

NameQuery = Annotated[str | None, Query(min_length=1, max_length=128, pattern=r"^[\x21-\x7e][\x20-\x7e]*$")]


class PriceEntry(BaseModel):
    provider: str | None
    model: str
    name: str | None
    source: str
    """`genai-prices` or `rate-card` (a custom or self-hosted model of the rate card)."""
    input_mtok: Decimal | None
    output_mtok: Decimal | None
    cache_read_mtok: Decimal | None
    cache_write_mtok: Decimal | None
    tiered: bool
    discount_percent: Decimal | None
    effective_input_mtok: Decimal | None
    effective_output_mtok: Decimal | None


class RateCardPublic(BaseModel):
    version: str
    models: list[dict[str, Any]]
    discounts: list[dict[str, Any]]
    tool_fees: dict[str, Decimal]


class PriceCatalogue(BaseModel):
    price_version: str
    at: datetime
    rate_card: RateCardPublic | None
    prices: list[PriceEntry]


def _base(value: Any) -> tuple[Decimal | None, bool]:
    if value is None:
        return None, False
    if isinstance(value, Decimal):
        return value, False
    base = getattr(value, "base", None)
    return (Decimal(base), True) if base is not None else (None, False)


def _rate_card(request: Request) -> RateCard | None:
    path = request.app.state.settings.rate_card
    if path is None:
        return None
    try:
        return load_rate_card(path)
    except RateCardError as exc:
        raise InvalidParameter(f"the configured rate card is invalid: {exc}", field="rate_card") from None


def _effective(entry: dict[str, Any], card: RateCard | None) -> PriceEntry:
    percent = None
    eff_in, eff_out = entry["input_mtok"], entry["output_mtok"]
    if card is not None and entry["source"] == "genai-prices":
        rate = card.model_rate(entry["provider"], entry["model"])
        if rate is not None:
            eff_in, eff_out = rate.input_mtok, rate.output_mtok
        else:
            percent = card.discount_percent(entry["provider"], entry["model"])
            if percent is not None:
                factor = (HUNDRED - percent) / HUNDRED
                eff_in = eff_in * factor if eff_in is not None else None
                eff_out = eff_out * factor if eff_out is not None else None
    return PriceEntry(**entry, discount_percent=percent, effective_input_mtok=eff_in, effective_output_mtok=eff_out)


def _genai_entry(provider_id: str, model: Any, at: datetime) -> dict[str, Any]:
    prices = model.get_prices(at)
    inp, t1 = _base(prices.input_mtok)
    out, t2 = _base(prices.output_mtok)
    cr, t3 = _base(prices.cache_read_mtok)
    cw, t4 = _base(prices.cache_write_mtok)
    return {
        "provider": provider_id,
        "model": model.id,
        "name": model.name,
        "source": "genai-prices",
        "input_mtok": inp,
        "output_mtok": out,
        "cache_read_mtok": cr,
        "cache_write_mtok": cw,
        "tiered": t1 or t2 or t3 or t4,
    }


@router.get("/prices", response_model=PriceCatalogue, summary="Prices in force, by provider and model")
def prices(
    request: Request,
    _key: Annotated[ApiKey, Depends(require("reports:read"))],
    provider: NameQuery = None,
    model: NameQuery = None,
    at: Annotated[datetime | None, Query(description="Prices at this time (default: now)")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> PriceCatalogue:
    when = utc_in_range(at, "at") or datetime.now(UTC)
    card = _rate_card(request)
    snapshot = data_snapshot.get_snapshot()
    entries: list[dict[str, Any]] = []
    if model is not None:
        try:
            found_provider, found_model = snapshot.find_provider_model(model, None, provider, None)
        except LookupError:
            found = None
        else:
            found = (found_provider.id, found_model)
        if found is not None:
            entries.append(_genai_entry(found[0], found[1], when))
    else:
        for p in snapshot.providers:
            if provider is not None and p.id.lower() != provider.lower():
                continue
            entries.extend(_genai_entry(p.id, m, when) for m in p.models)
    if card is not None:
        for rate in card.models:
            if model is not None and rate.model.lower() != model.lower():
                continue
            if provider is not None and rate.provider is not None and rate.provider.lower() != provider.lower():
                continue
            entries.append(
                {
                    "provider": rate.provider,
                    "model": rate.model,
                    "name": None,
                    "source": "rate-card",
                    "input_mtok": rate.input_mtok,
                    "output_mtok": rate.output_mtok,
                    "cache_read_mtok": rate.cache_read_mtok,
                    "cache_write_mtok": rate.cache_write_mtok,
                    "tiered": False,
                }
            )
    public = None
    if card is not None:
        public = RateCardPublic(
            version=card.version,
            models=[m.model_dump(mode="json") for m in card.models],
            discounts=[d.model_dump(mode="json") for d in card.discounts],
            tool_fees=dict(card.tool_fees),
        )
    return PriceCatalogue(
        price_version=genai_prices_version(),
        at=when,
        rate_card=public,
        prices=[_effective(e, card) for e in entries[:limit]],
    )
