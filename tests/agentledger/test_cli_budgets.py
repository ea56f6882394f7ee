"""`agentledger budgets set|delete` on the real broker: the policy the worker reads, or a clear error."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from typer.testing import CliRunner

from agentledger import cli
from schemas.budgets import Action, BudgetPolicy, Window
from schemas.topics import BUDGET_POLICIES
from tests.conftest import read_topic

pytestmark = pytest.mark.integration


def _policies(settings) -> list[tuple[bytes | None, bytes | None]]:
    return read_topic(settings, BUDGET_POLICIES.suffix)


def test_set_with_every_option_then_delete(settings_factory, monkeypatch):
    settings = settings_factory()
    for name, value in settings.environment().items():
        if name.startswith("AGENTLEDGER_"):
            monkeypatch.setenv(name, value)
    cli.get_settings.cache_clear()
    args = ["budgets", "set", "search-monthly", "--scope", "team,agent_type", "--match", "team=search",
            "--limit-cost", "25.50", "--window", "calendar_month", "--timezone", "Europe/Paris",
            "--action", "pause", "--escalate", "warn=0.5", "--escalate", "downgrade=0.8",
            "--downgrade", "gpt-4o=gpt-4o-mini", "--threshold", "0.9", "--threshold", "1", "--name", "Search"]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    [(key, value)] = _policies(settings)
    assert key == b"search-monthly" and value is not None
    policy = BudgetPolicy.model_validate_json(value)
    assert (policy.window, policy.timezone, policy.action, policy.limit_cost) == (
        Window.CALENDAR_MONTH, "Europe/Paris", Action.PAUSE, Decimal("25.50"),
    )  # fmt: skip
    assert policy.escalation == {Action.WARN: Decimal("0.5"), Action.DOWNGRADE: Decimal("0.8")}
    assert policy.downgrade_to == {"gpt-4o": "gpt-4o-mini"} and policy.thresholds == (Decimal("0.9"), Decimal(1))
    assert orjson.loads(result.stdout)["policy_id"] == "search-monthly"

    result = CliRunner().invoke(cli.app, ["budgets", "delete", "search-monthly"])
    assert result.exit_code == 0, result.output
    assert _policies(settings)[-1] == (b"search-monthly", None)
    cli.get_settings.cache_clear()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--timezone", "Mars/Base"], "invalid timezone: Value error, unknown time zone 'Mars/Base'"),
        (["--escalate", "kill=0.5"], "escalation lists only actions milder"),
        (["--escalate", "warn"], "expected name=value"),
        (["--window", "fortnight"], "invalid window"),
        (["--threshold", "1.5"], "thresholds are fractions"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(extra, message):
    result = CliRunner().invoke(cli.app, ["budgets", "set", "p", "--scope", "team", "--limit-tokens", "10", *extra])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
