"""Webhook delivery attempts of the alert dispatcher, on the `alert-deliveries` topic (key: alert id).

One record per attempt. `(alert_id, destination, attempt)` is unique: attempt numbers go on
across dispatcher restarts. A record with `ok` true means the destination accepted the alert
(2xx); the dispatcher never sends that alert to that destination again.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.budgets import PolicyId
from schemas.events import Strict, UtcDatetime


class AlertDelivery(Strict):
    """One attempt to deliver one alert to one webhook."""

    alert_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    policy_id: PolicyId
    destination: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    """`<name or scheme://host[:port]>#<sha256(url)[:12]>`: stable per URL, without the URL's
    path or query, which often hold the webhook's secret."""
    format: Literal["json", "slack"]
    attempt: Annotated[int, Field(ge=1)]
    attempted_at: UtcDatetime
    ok: bool
    final: bool
    """No further attempt follows for this alert and destination (delivered, or given up)."""
    status_code: Annotated[int, Field(ge=100, le=599)] | None = None
    error: Annotated[str, StringConstraints(max_length=1024)] = ""
    latency_ms: Annotated[float, Field(ge=0)]
    next_attempt_at: UtcDatetime | None = None
