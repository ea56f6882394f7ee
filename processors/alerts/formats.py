"""What the dispatcher sends: the Alert as JSON, or a Slack incoming-webhook message.

Both carry `Idempotency-Key: <alert_id>` so that a receiver can drop the one duplicate the
dispatcher cannot rule out (a crash after the receiver accepted and before the attempt was
recorded). Pure functions of the alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import orjson

from schemas import codec
from schemas.budgets import Alert

Format = Literal["json", "slack"]
USER_AGENT = "agentledger-alert-dispatcher/1"
SLACK_HEADER_MAX = 150
SLACK_TEXT_MAX = 3000


@dataclass(frozen=True, slots=True)
class Payload:
    body: bytes
    headers: dict[str, str]


def headers_for(alert: Alert) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Idempotency-Key": alert.alert_id,
        "User-Agent": USER_AGENT,
    }


def percent(fraction: Decimal) -> str:
    """0.8 -> '80', 1 -> '100', 0.333 -> '33.3'."""
    text = f"{fraction * 100:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def money(amount: Decimal) -> str:
    """Dollars: cents from $1 up, up to six decimals below (a $0.0042 spend is not $0.00)."""
    if abs(amount) >= 1 or amount == 0:
        return f"${amount.quantize(Decimal('0.01')):,}"
    whole, _, fraction = f"{amount.quantize(Decimal('0.000001')):f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def escape(text: str) -> str:
    """Slack mrkdwn control characters; backticks would end a code span."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "'")


def usage(alert: Alert) -> str:
    parts = []
    if alert.limit_cost is not None:
        parts.append(f"{money(alert.spent_cost)} of {money(alert.limit_cost)}")
    if alert.limit_tokens is not None:
        parts.append(f"{alert.spent_tokens:,} of {alert.limit_tokens:,} tokens")
    return ", ".join(parts)


def window_text(alert: Alert) -> str:
    if alert.window_start is None:
        return "lifetime"
    return f"since {alert.window_start:%Y-%m-%d %H:%M} UTC"


def summary(alert: Alert) -> str:
    """One line, plain text: the Slack notification text and fallback."""
    return (
        f"Budget alert: policy {alert.policy_id} reached {percent(alert.threshold)}% "
        f"for {alert.scope_value or '*'} ({usage(alert)}, {window_text(alert)})"
    )


def slack_message(alert: Alert) -> dict[str, Any]:
    """An incoming-webhook message: `text` (notifications, fallback) and Block Kit `blocks`."""
    header = f"Budget alert: {percent(alert.threshold)}% of {alert.policy_id}"[:SLACK_HEADER_MAX]
    fields = [
        f"*Policy*\n`{escape(alert.policy_id)}`",
        f"*Scope*\n`{escape(alert.scope_value or '*')}`",
        f"*Threshold*\n{percent(alert.threshold)}%",
        f"*Window*\n{window_text(alert)}",
    ]
    if alert.limit_cost is not None:
        fields.append(f"*Spent*\n{money(alert.spent_cost)} of {money(alert.limit_cost)}")
    if alert.limit_tokens is not None:
        fields.append(f"*Tokens*\n{alert.spent_tokens:,} of {alert.limit_tokens:,}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": False}},
        {"type": "section", "text": {"type": "mrkdwn", "text": escape(summary(alert))[:SLACK_TEXT_MAX]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if alert.top_sessions:
        top = " · ".join(
            f"`{escape(s.session_id)}` {money(s.spent_cost)} ({s.spent_tokens:,} tok)" for s in alert.top_sessions[:5]
        )
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"Top sessions: {top}"}]})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"alert `{escape(alert.alert_id)}` · issued {alert.issued_at:%Y-%m-%d %H:%M:%S} UTC",
                }
            ],
        }
    )
    return {"text": escape(summary(alert))[:SLACK_TEXT_MAX], "blocks": blocks}


def render(alert: Alert, fmt: Format) -> Payload:
    if fmt == "slack":
        return Payload(orjson.dumps(slack_message(alert)), headers_for(alert))
    # orjson's datetimes (`+00:00`), as this payload has always had them: webhook receivers are
    # not ours, and one on Python 3.10 parsing with datetime.fromisoformat refuses a `Z`
    return Payload(codec.dumps(alert.model_dump(exclude_none=True)), headers_for(alert))
