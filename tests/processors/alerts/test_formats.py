"""Payload formats: the Alert as JSON, and the Slack incoming-webhook message."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from processors.alerts.formats import money, percent, render
from schemas.budgets import Alert
from tests.processors.alerts.alerts import make_alert

pytestmark = pytest.mark.unit


def test_json_payload_is_the_alert_with_an_idempotency_key() -> None:
    alert = make_alert("al-42")
    payload = render(alert, "json")
    body = orjson.loads(payload.body)
    assert body == {
        "alert_id": "al-42",
        "policy_id": "team-cap",
        "scope": ["team", "agent_type"],
        "scope_value": "team=platform|agent_type=pr-reviewer",
        "window_start": "2026-06-01T00:00:00+00:00",
        "threshold": "0.8",
        "spent_cost": "8.123456",
        "spent_tokens": 812345,
        "limit_cost": "10",
        "limit_tokens": 1000000,
        "top_sessions": [
            {"session_id": "sess-a", "spent_cost": "5.5", "spent_tokens": 500000},
            {"session_id": "sess-<b>", "spent_cost": "0.0042", "spent_tokens": 1200},
        ],
        "issued_at": "2026-06-01T12:34:56+00:00",
    }
    assert Alert.model_validate_json(payload.body) == alert  # Decimals round-trip exactly
    assert payload.headers["Idempotency-Key"] == "al-42"
    assert payload.headers["Content-Type"] == "application/json"


def test_slack_payload() -> None:
    payload = render(make_alert("al-7"), "slack")
    message = orjson.loads(payload.body)
    assert set(message) == {"text", "blocks"}
    assert message["text"] == (
        "Budget alert: policy team-cap reached 80% for team=platform|agent_type=pr-reviewer "
        "($8.12 of $10.00, 812,345 of 1,000,000 tokens, since 2026-06-01 00:00 UTC)"
    )
    header, summary, fields, top, footer = message["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Budget alert: 80% of team-cap", "emoji": False},
    }
    assert summary["type"] == "section" and summary["text"]["type"] == "mrkdwn"
    assert [f["text"] for f in fields["fields"]] == [
        "*Policy*\n`team-cap`",
        "*Scope*\n`team=platform|agent_type=pr-reviewer`",
        "*Threshold*\n80%",
        "*Window*\nsince 2026-06-01 00:00 UTC",
        "*Spent*\n$8.12 of $10.00",
        "*Tokens*\n812,345 of 1,000,000",
    ]
    assert top["elements"][0]["text"] == (
        "Top sessions: `sess-a` $5.50 (500,000 tok) · `sess-&lt;b&gt;` $0.0042 (1,200 tok)"
    )
    assert footer["elements"][0]["text"] == "alert `al-7` · issued 2026-06-01 12:34:56 UTC"
    assert payload.headers["Idempotency-Key"] == "al-7"


def test_slack_payload_for_a_lifetime_token_only_budget_without_sessions() -> None:
    alert = make_alert(window_start=None, limit_cost=None, threshold=Decimal("1"), top_sessions=[])
    message = orjson.loads(render(alert, "slack").body)
    assert message["text"].endswith(
        "reached 100% for team=platform|agent_type=pr-reviewer (812,345 of 1,000,000 tokens, lifetime)"
    )
    assert [b["type"] for b in message["blocks"]] == ["header", "section", "section", "context"]
    assert len(message["blocks"][2]["fields"]) == 5


@pytest.mark.parametrize(
    ("fraction", "text"),
    [
        (Decimal("0.8"), "80"),
        (Decimal("1"), "100"),
        (Decimal("0.5"), "50"),
        (Decimal("0.333"), "33.3"),
        (Decimal("0.05"), "5"),
    ],
)
def test_percent(fraction: Decimal, text: str) -> None:
    assert percent(fraction) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [(Decimal("0"), "$0.00"), (Decimal("1234.5"), "$1,234.50"), (Decimal("0.0042"), "$0.0042"),
     (Decimal("0.5"), "$0.50"), (Decimal("0.1234567"), "$0.123457"), (Decimal("10.005"), "$10.00")],
)  # fmt: skip
def test_money(amount: Decimal, text: str) -> None:
    assert money(amount) == text
