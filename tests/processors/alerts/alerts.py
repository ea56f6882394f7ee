"""Alert builders shared by the alert dispatcher tests."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from schemas.budgets import Alert


def make_alert(alert_id: str = "al-1", **overrides: Any) -> Alert:
    values: dict[str, Any] = {
        "alert_id": alert_id,
        "policy_id": "team-cap",
        "scope": ["team", "agent_type"],
        "scope_value": "team=platform|agent_type=pr-reviewer",
        "window_start": "2026-06-01T00:00:00Z",
        "threshold": Decimal("0.8"),
        "spent_cost": Decimal("8.123456"),
        "spent_tokens": 812_345,
        "limit_cost": Decimal("10"),
        "limit_tokens": 1_000_000,
        "top_sessions": [
            {"session_id": "sess-a", "spent_cost": Decimal("5.5"), "spent_tokens": 500_000},
            {"session_id": "sess-<b>", "spent_cost": Decimal("0.0042"), "spent_tokens": 1200},
        ],
        "issued_at": "2026-06-01T12:34:56Z",
    }
    values.update(overrides)
    return Alert.model_validate(values)
