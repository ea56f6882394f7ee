"""/v1/alerts: threshold alerts of budget policies, and their webhook delivery attempts.

The processors publish one alert per (policy, scope value, window, threshold) to the
`alerts` topic; the status sink stores them. A key restricted to a team reads the alerts
whose scope value names its team (`team=<team>`), and nothing else: another alert is 404.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel

from api.admin_queries import alerts_query, deliveries_query, utc_in_range
from api.auth import require
from api.errors import InvalidParameter, NotFound
from api.keys import ApiKey
from api.money import EXPONENT as CENT_EXPONENT
from api.money import MoneyText

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])

AlertIdPath = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")]


class TopSessionPublic(BaseModel):
    session_id: str
    spent_cost: MoneyText
    spent_tokens: int


class AlertPublic(BaseModel):
    alert_id: str
    policy_id: str
    scope: list[str]
    scope_value: str
    team: str | None
    window_start: datetime | None
    threshold: Decimal
    spent_cost: MoneyText
    spent_tokens: int
    limit_cost: MoneyText | None
    limit_tokens: int | None
    top_sessions: list[TopSessionPublic]
    issued_at: datetime
    delivery_attempts: int
    deliveries_ok: int


class DeliveryPublic(BaseModel):
    destination: str
    attempt: int
    attempted_at: datetime
    ok: bool
    status_code: int | None
    error: str
    next_attempt_at: datetime | None


class AlertDetail(AlertPublic):
    deliveries: list[DeliveryPublic]


class AlertList(BaseModel):
    alerts: list[AlertPublic]


def _money(value: Any) -> Decimal:
    return Decimal(value).quantize(CENT_EXPONENT)


def _alert(row: dict[str, Any]) -> AlertPublic:
    values = dict(row)
    values["threshold"] = Decimal(row["threshold"]).normalize()
    values["spent_cost"] = _money(row["spent_cost"])
    values["limit_cost"] = _money(row["limit_cost"]) if row["limit_cost"] is not None else None
    values["top_sessions"] = [
        TopSessionPublic(session_id=s["session_id"], spent_cost=_money(s["spent_cost"]), spent_tokens=s["spent_tokens"])
        for s in orjson.loads(row["top_sessions"] or "[]")
    ]
    values["delivery_attempts"] = int(row["delivery_attempts"] or 0)
    values["deliveries_ok"] = int(row["deliveries_ok"] or 0)
    return AlertPublic(**values)


@router.get("", response_model=AlertList, summary="Threshold alerts, newest first")
def list_alerts(
    request: Request,
    key: Annotated[ApiKey, Depends(require("reports:read"))],
    policy_id: Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] = None,
    start: Annotated[datetime | None, Query(alias="from", description="issued at or after")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="issued before")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AlertList:
    start, end = utc_in_range(start, "from"), utc_in_range(end, "to")
    if start is not None and end is not None and end <= start:
        raise InvalidParameter("'to' must be after 'from'", field="to")
    db = request.app.state.settings.database
    sql, params = alerts_query(db, team=key.team, policy_id=policy_id, start=start, end=end, limit=limit)
    return AlertList(alerts=[_alert(r) for r in request.app.state.warehouse.query(sql, params)])


@router.get("/{alert_id}", response_model=AlertDetail, summary="One alert with its delivery attempts")
def get_alert(
    request: Request, alert_id: AlertIdPath, key: Annotated[ApiKey, Depends(require("reports:read"))]
) -> AlertDetail:
    wh, db = request.app.state.warehouse, request.app.state.settings.database
    rows = wh.query(*alerts_query(db, team=key.team, alert_id=alert_id, limit=1))
    if not rows:
        raise NotFound(f"no alert {alert_id!r}", field="alert_id")
    deliveries = [DeliveryPublic(**r) for r in wh.query(*deliveries_query(db, alert_id))]
    return AlertDetail(**_alert(rows[0]).model_dump(), deliveries=deliveries)
