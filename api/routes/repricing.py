"""POST /v1/reprice: re-price a time range under a rate card; dry-run shows the differences.

Body: `from`, `to` (event time, at most 366 days apart), `rate_card` (the YAML text; when
absent, the rate card configured with AGENTLEDGER_RATE_CARD), `dry_run` (default false).
Unless dry-run, the differences are sent to cost-events as adjustment events (see
`api.repricing`: ids derived from the original event and the rate card, so re-running is
safe). Needs an unrestricted admin key: a re-pricing spans every team.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.admin_queries import utc_in_range
from api.auth import require_unrestricted_admin
from api.errors import InvalidParameter, KafkaUnavailable
from api.keys import ApiKey
from api.money import EXPONENT as CENT_EXPONENT
from api.money import MoneyText
from api.queries import to_utc
from api.repricing import MAX_LISTED, EmitFailed, RepriceResult, TooManyEvents, emit, plan
from processors.errors import RateCardError
from processors.ratecard import RateCard, load_rate_card, parse_rate_card

router = APIRouter(prefix="/v1", tags=["admin"])

MAX_RANGE = timedelta(days=366)


class RepriceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: datetime = Field(alias="from", description="Event time, inclusive")
    end: datetime = Field(alias="to", description="Event time, exclusive")
    rate_card: str | None = Field(default=None, max_length=256 * 1024, description="Rate card YAML")
    dry_run: bool = False

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return to_utc(value)


class DifferencePublic(BaseModel):
    event_id: str
    adjustment_event_id: str
    session_id: str
    team: str | None
    model: str | None
    tool_name: str | None
    occurred_at: datetime
    stored_cost: MoneyText
    current_cost: MoneyText
    new_cost: MoneyText
    difference: MoneyText


class RepriceResponse(BaseModel):
    rate_card_version: str
    rate_card_hash: str
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    dry_run: bool
    events_examined: int
    unchanged: int
    already_applied: int
    differences_count: int
    total_difference: MoneyText
    emitted: int
    differences: list[DifferencePublic] = Field(description=f"The first {MAX_LISTED}, in event time order")


def _q(value: Decimal) -> Decimal:
    return value.quantize(CENT_EXPONENT)


def response_of(result: RepriceResult) -> RepriceResponse:
    return RepriceResponse(
        rate_card_version=result.rate_card_version,
        rate_card_hash=result.rate_card_hash,
        start=result.start,
        end=result.end,
        dry_run=result.dry_run,
        events_examined=result.events_examined,
        unchanged=result.unchanged,
        already_applied=result.already_applied,
        differences_count=len(result.differences),
        total_difference=_q(result.total_difference),
        emitted=result.emitted,
        differences=[
            DifferencePublic(
                event_id=d.event_id,
                adjustment_event_id=d.adjustment_event_id,
                session_id=d.session_id,
                team=d.team,
                model=d.model,
                tool_name=d.tool_name,
                occurred_at=d.occurred_at,
                stored_cost=_q(d.stored_cost),
                current_cost=_q(d.current_cost),
                new_cost=_q(d.new_cost),
                difference=_q(d.difference),
            )
            for d in result.differences[:MAX_LISTED]
        ],
    )


def check_request(body: RepriceRequest) -> None:
    utc_in_range(body.start, "from")
    utc_in_range(body.end, "to")
    if body.end <= body.start:
        raise InvalidParameter("'to' must be after 'from'", field="to")
    if body.end - body.start > MAX_RANGE:
        raise InvalidParameter("at most 366 days per re-pricing", field="to")


def _card(request: Request, text: str | None) -> RateCard:
    try:
        if text is not None:
            return parse_rate_card(text)
        path = request.app.state.settings.rate_card
        if path is None:
            raise InvalidParameter("no rate_card in the body and none configured", field="rate_card")
        return load_rate_card(path)
    except RateCardError as exc:
        raise InvalidParameter(str(exc)[:2000], field="rate_card") from None


@router.post("/reprice", response_model=RepriceResponse, response_model_by_alias=True, summary="Re-price a range")
def reprice(
    request: Request, body: RepriceRequest, _admin: Annotated[ApiKey, Depends(require_unrestricted_admin)]
) -> RepriceResponse:
    check_request(body)
    card = _card(request, body.rate_card)
    state = request.app.state
    try:
        result = plan(state.warehouse, state.settings, card, body.start, body.end)
        if not body.dry_run:
            emit(state.settings, result)
    except TooManyEvents as exc:
        raise InvalidParameter(str(exc), field="from") from None
    except EmitFailed as exc:
        raise KafkaUnavailable(str(exc)) from None
    return response_of(result)
