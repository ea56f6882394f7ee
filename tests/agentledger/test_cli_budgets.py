"""`agentledger budgets set|delete` on the real broker: the policy the worker reads, or a clear error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from typer.testing import CliRunner

from agentledger import cli
from api.migrations import migrate
from api.sink import Sink
from api.warehouse.chdb import ChdbWarehouse
from schemas.budgets import Action, BudgetPolicy, PolicyRecord, Window
from schemas.topics import BUDGET_POLICIES
from tests.api.conftest import SinkThread, priced_event_factory, produce_priced, wait_caught_up
from tests.conftest import read_topic

pytestmark = pytest.mark.integration

__all__ = ["priced_event_factory", "produce_priced"]  # fixtures of the API's tests, used here


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


def test_set_starts_the_budgets_from_the_warehouses_spend(
    settings_factory, monkeypatch, priced_event_factory, produce_priced
):
    """Without --api the CLI reads the warehouse itself (here a chDB folder no API holds), through
    the API's own code, and publishes the balance with the policy."""
    settings = settings_factory()
    now = datetime.now(UTC)
    zone = "UTC" if 1 <= now.hour < 22 else "Asia/Tokyo"
    wh = ChdbWarehouse(settings.chdb_path)
    try:
        migrate(wh, settings.database)
        sink = SinkThread(Sink(settings, wh))
        events = [priced_event_factory(occurred_at=now - timedelta(minutes=1), cost="0.25") for _ in range(3)]
        events.append(priced_event_factory(team="search", occurred_at=now - timedelta(minutes=1), cost="9"))
        produce_priced(settings, events)
        wait_caught_up(settings)
        sink.stop()
    finally:
        wh.close()
    for name, value in settings.environment().items():
        if name.startswith("AGENTLEDGER_"):
            monkeypatch.setenv(name, value)
    cli.get_settings.cache_clear()
    args = ["budgets", "set", "pay-day", "--scope", "team", "--match", "team=payments", "--limit-cost", "1",
            "--window", "calendar_day", "--timezone", zone]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    cli.get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    opening = orjson.loads(result.stdout)["opening_balance"]
    assert (opening["status"], Decimal(opening["spent_cost"]), opening["scopes"]) == ("applied", Decimal("0.75"), 1)
    [(key, value)] = _policies(settings)
    balance = PolicyRecord.model_validate_json(value or b"").opening_balance
    assert key == b"pay-day" and balance is not None
    [scope] = balance.scopes
    assert (scope.scope_value, scope.cost, scope.tokens) == ("team=payments", Decimal("0.75"), 3 * 1200)
    assert scope.sessions == (("sess-wf-1", 3 * 1200, Decimal("0.75")),)
