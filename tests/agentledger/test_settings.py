"""Settings.environment(): a child process reads back exactly the parent's settings."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from agentledger.settings import Settings

pytestmark = pytest.mark.unit


def test_a_child_environment_round_trips_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = Settings(
        topic_prefix="t1.",
        session_token_cap=5_000,
        unpriced_policy="block",
        fallback_price_per_mtok_input=Decimal("12.5"),
        rate_card=Path("/etc/agentledger/card.yaml"),
        clickhouse_url="http://ch:8123",
        alert_allow_private_destinations=True,
        alert_webhooks=[{"url": "http://127.0.0.1:9000/hook", "format": "slack"}],
        auth="disabled",
    )
    env = parent.environment(base={"PATH": "/usr/bin"}, worker_web_port=7001)
    for name in list(os.environ):
        if name.startswith("AGENTLEDGER_") or name == "CLICKHOUSE_URL":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == parent.model_copy(update={"worker_web_port": 7001})
    assert env["PATH"] == "/usr/bin"


def test_the_parents_own_configuration_does_not_leak_into_the_child() -> None:
    env = Settings(database="mine").environment(
        base={"AGENTLEDGER_DATABASE": "theirs", "CLICKHOUSE_URL": "x", "HOME": "/h"}
    )
    assert env["AGENTLEDGER_DATABASE"] == "mine"
    assert "CLICKHOUSE_URL" not in env
    assert env["HOME"] == "/h"
