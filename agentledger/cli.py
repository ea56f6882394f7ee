"""The `agentledger` command: one subcommand per process, plus `up` for all on one machine."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer

from agentledger.settings import get_settings

app = typer.Typer(
    name="agentledger",
    help="Cost accounting, budget enforcement and chargeback for AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
budgets = typer.Typer(help="Budget policies (written to the compacted budget-policies topic).", no_args_is_help=True)
app.add_typer(budgets, name="budgets")


def _logging() -> None:
    from agentledger.logs import configure_logging

    configure_logging()


@app.command()
def worker() -> None:
    """Run the stream processors: validate, dedupe, price, enforce budgets, send signals."""
    _logging()
    from processors.worker import run

    run(get_settings())


@app.command()
def sink() -> None:
    """Run the ClickHouse sink alone (server mode; in embedded mode `api` runs it)."""
    _logging()
    from api.sink import run_sink

    run_sink(get_settings())


@app.command()
def api() -> None:
    """Serve the HTTP API (and, with the embedded engine, the sink in the same process)."""
    _logging()
    from api.server import run

    run(get_settings())


@app.command()
def migrate() -> None:
    """Apply the numbered ClickHouse migrations in sql/ (a no-op when up to date)."""
    _logging()
    from api.migrations import migrate as apply
    from api.warehouse import open_warehouse

    settings = get_settings()
    warehouse = open_warehouse(settings)
    try:
        applied = apply(warehouse, settings.database)
    finally:
        warehouse.close()
    typer.echo(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none, up to date'}")


@app.command()
def topics() -> None:
    """Create the pipeline's Kafka topics if they are missing."""
    _logging()
    from agentledger.kafka_admin import ensure_topics

    ensure_topics(get_settings())


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="Drive a simulated fleet of agents through the hook.")] = True,
    keep_kafka: Annotated[bool, typer.Option(help="Leave the local broker running at exit.")] = False,
) -> None:
    """Run everything on this machine: local Kafka, worker, API with embedded ClickHouse, demo fleet."""
    _logging()
    from agentledger.local import run_local

    raise typer.Exit(run_local(get_settings(), demo=demo, keep_kafka=keep_kafka))


@app.command("demo")
def demo_command(
    sessions: Annotated[int, typer.Option(min=1, max=1000)] = 12,
    calls: Annotated[int, typer.Option(min=1, max=10_000, help="Calls per well-behaved session.")] = 8,
) -> None:
    """Drive a simulated fleet of agents through the SDK hook against a running pipeline."""
    _logging()
    from agentledger.demo import run_demo

    run_demo(get_settings(), sessions=sessions, calls=calls)


@app.command("settings")
def show_settings() -> None:
    """Print the settings in force (from AGENTLEDGER_* and CLICKHOUSE_URL)."""
    typer.echo(json.dumps(get_settings().model_dump(mode="json"), indent=2))


@budgets.command("set")
def budget_set(
    policy_id: Annotated[str, typer.Argument(help="Stable id; setting it again replaces the policy.")],
    scope: Annotated[str, typer.Option(help="Comma-separated: session, agent_type, team, project, customer.")],
    match: Annotated[list[str] | None, typer.Option(help="dimension=value (repeatable); absent = every value.")] = None,
    limit_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    limit_cost: Annotated[str | None, typer.Option(help="USD, e.g. 25.00")] = None,
    window: Annotated[str, typer.Option()] = "lifetime",
    action: Annotated[str, typer.Option()] = "kill",
) -> None:
    """Create or replace a budget policy."""
    from processors.policies import publish_policy

    from schemas.budgets import BudgetPolicy

    policy = BudgetPolicy.model_validate(
        {
            "policy_id": policy_id,
            "scope": tuple(s.strip() for s in scope.split(",") if s.strip()),
            "match": dict(m.split("=", 1) for m in (match or [])),
            "limit_tokens": limit_tokens,
            "limit_cost": Decimal(limit_cost) if limit_cost is not None else None,
            "window": window,
            "action": action,
        }
    )
    publish_policy(get_settings(), policy)
    typer.echo(policy.model_dump_json(exclude_none=True))


@budgets.command("delete")
def budget_delete(policy_id: str) -> None:
    """Delete a budget policy (a tombstone on the compacted topic)."""
    from processors.policies import delete_policy

    delete_policy(get_settings(), policy_id)
    typer.echo(f"deleted {policy_id}")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


if __name__ == "__main__":
    app()
