"""The `agentledger` command: one subcommand per process, plus `up` for all on one machine."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

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


ApiUrl = Annotated[
    str | None,
    typer.Option("--api", envvar="AGENTLEDGER_API_URL", help="Go through this running API, e.g. http://127.0.0.1:8000"),
]
AdminKey = Annotated[
    str | None,
    typer.Option("--admin-key", envvar="AGENTLEDGER_ADMIN_KEY", help="An unrestricted admin key (with --api)"),
]


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
    """Run the ClickHouse sinks (server mode; in embedded mode `api` runs them): priced
    events, and with CLICKHOUSE_URL set also signals, session statuses and alerts."""
    _logging()
    import threading

    import structlog

    from api.migrations import migrate as migrate_all
    from api.sink import run_sink
    from api.status_sink import StatusSink
    from api.warehouse import open_warehouse

    settings = get_settings()
    if not settings.clickhouse_url:
        run_sink(settings)  # chDB: one process per folder; `agentledger api` runs both sinks
        return
    warehouse = open_warehouse(settings)
    migrate_all(warehouse, settings.database)
    stop = threading.Event()

    def run_status() -> None:
        try:
            StatusSink(settings, warehouse).run(stop)
        except Exception:  # logged; the priced-events sink goes on
            structlog.get_logger("agentledger.cli").exception("status_sink.crashed")

    status = threading.Thread(target=run_status, name="agentledger-status-sink", daemon=True)
    status.start()
    try:
        run_sink(settings)
    finally:
        stop.set()
        status.join(timeout=30)
        warehouse.close()


@app.command()
def dispatcher() -> None:
    """Run the alert dispatcher: deliver `alerts` to AGENTLEDGER_ALERT_WEBHOOKS (JSON or Slack)."""
    _logging()
    from processors.alerts.dispatcher import run_dispatcher

    run_dispatcher(get_settings())


@app.command("status-sink")
def status_sink() -> None:
    """Run the status sink alone (server mode): signals, session statuses, alerts and their
    deliveries into ClickHouse; in embedded mode `api` runs it."""
    _logging()
    from api.status_sink import run_status_sink

    run_status_sink(get_settings())


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

    # A laptop demo on loopback needs no keys; check_auth_settings refuses this off loopback.
    os.environ.setdefault("AGENTLEDGER_AUTH", "disabled")
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


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise typer.BadParameter(f"expected name=value, got {item!r}", param_hint=option)
        out[name.strip()] = value.strip()
    return out


@budgets.command("set")
def budget_set(
    policy_id: Annotated[str, typer.Argument(help="Stable id; setting it again replaces the policy.")],
    scope: Annotated[str, typer.Option(help="Comma-separated: session, agent_type, team, project, customer.")],
    match: Annotated[list[str] | None, typer.Option(help="dimension=value (repeatable); absent = every value.")] = None,
    limit_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    limit_cost: Annotated[str | None, typer.Option(help="USD, e.g. 25.00")] = None,
    window: Annotated[
        str,
        typer.Option(
            help="lifetime, rolling_1h, rolling_24h, rolling_7d, rolling_30d, calendar_day, calendar_week, calendar_month"
        ),
    ] = "lifetime",
    timezone: Annotated[str, typer.Option(help="IANA zone of calendar windows, e.g. Europe/Paris")] = "UTC",
    action: Annotated[str, typer.Option(help="At the limit: warn, downgrade, pause or kill")] = "kill",
    escalate: Annotated[
        list[str] | None,
        typer.Option(help="Milder step before the limit, action=fraction, e.g. warn=0.5 (repeatable)"),
    ] = None,
    downgrade: Annotated[
        list[str] | None, typer.Option(help="Routing for downgrade, model=cheaper-model (repeatable)")
    ] = None,
    threshold: Annotated[
        list[str] | None, typer.Option(help="Alert threshold, a fraction in (0, 1] (repeatable; default 0.5 0.8 1)")
    ] = None,
    name: Annotated[str, typer.Option(help="A label for people")] = "",
    disabled: Annotated[bool, typer.Option("--disabled", help="Store it switched off")] = False,
    opening_balance: Annotated[
        bool,
        typer.Option(
            "--opening-balance/--no-opening-balance",
            help="Start the budgets from the spend already made in their window (default), or from zero",
        ),
    ] = True,
    api_url: ApiUrl = None,
    admin_key: AdminKey = None,
) -> None:
    """Create or replace a budget policy; it takes effect within seconds, running sessions included.

    Its budgets start from the spend the warehouse holds for their window (printed under
    `opening_balance`). While `agentledger api` holds the embedded warehouse, pass --api (and an
    admin or budgets:write key) to go through it; a warehouse that cannot be read leaves the
    budgets at zero, with a warning."""
    from schemas.budgets import BudgetPolicy

    fields: dict[str, Any] = {
        "policy_id": policy_id,
        "name": name,
        "scope": tuple(s.strip() for s in scope.split(",") if s.strip()),
        "match": _pairs(match, "--match"),
        "limit_tokens": limit_tokens,
        "limit_cost": limit_cost,
        "window": window,
        "timezone": timezone,
        "action": action,
        "escalation": _pairs(escalate, "--escalate"),
        "downgrade_to": _pairs(downgrade, "--downgrade"),
        "enabled": not disabled,
    }
    if threshold:
        fields["thresholds"] = tuple(threshold)
    try:
        policy = BudgetPolicy.model_validate(fields)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in error["loc"]) or "policy"
            typer.echo(f"invalid {where}: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    if api_url:
        body = _api_call(
            api_url,
            admin_key,
            "PUT",
            f"/v1/budgets/{policy.policy_id}",
            json=policy.model_dump(mode="json", exclude_none=True),
            params={"opening_balance": str(opening_balance).lower()},
        )
    else:
        body = _publish_with_opening_balance(policy, opening_balance)
    status = body["opening_balance"]
    if status["status"] == "failed":
        typer.echo(f"warning: budgets start at zero, the opening balance failed: {status['error']}", err=True)
    typer.echo(json.dumps(body))


def _publish_with_opening_balance(policy: Any, wanted: bool) -> dict[str, Any]:
    """`budgets set` without --api: the API's own steps (api.opening_balance, then publish)."""
    from datetime import UTC, datetime

    from api.opening_balance import opening_for_write
    from api.warehouse import WarehouseError, open_warehouse
    from processors.policies import publish_policy

    settings = get_settings()
    warehouse = None
    now = datetime.now(UTC)
    if wanted:
        try:
            warehouse = open_warehouse(settings)
        except WarehouseError as exc:
            typer.echo(f"warning: {exc}; with a running API pass --api to read its warehouse", err=True)
    try:
        balance, summary = opening_for_write(warehouse, settings.database, policy, now, wanted=wanted)
    finally:
        if warehouse is not None:
            warehouse.close()
    publish_policy(settings, policy, opening_balance=balance)
    return {**policy.model_dump(mode="json", exclude_none=True), "opening_balance": summary.model_dump(mode="json")}


@budgets.command("delete")
def budget_delete(policy_id: str) -> None:
    """Delete a budget policy (a tombstone on the compacted topic)."""
    from processors.policies import delete_policy

    delete_policy(get_settings(), policy_id)
    typer.echo(f"deleted {policy_id}")


keys = typer.Typer(
    help=(
        "API keys (stored hashed in the warehouse). Without --api they open the warehouse "
        "directly, which works with a ClickHouse server, or with chDB while no API runs on "
        "its folder; while `agentledger api` holds the chDB folder, pass --api and an admin key."
    ),
    no_args_is_help=True,
)
app.add_typer(keys, name="keys")


def _api_client(url: str, admin_key: str | None) -> Any:
    import httpx

    if not admin_key:
        typer.echo("error: --api needs an admin key (--admin-key or AGENTLEDGER_ADMIN_KEY)", err=True)
        raise typer.Exit(2)
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)


def _api_call(url: str, admin_key: str | None, method: str, path: str, **kwargs: Any) -> Any:
    with _api_client(url, admin_key) as client:
        response = client.request(method, path, **kwargs)
    if response.status_code >= 400:
        typer.echo(f"error: HTTP {response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)
    return response.json()


@contextmanager
def _key_store() -> Iterator[Any]:
    from api.keys import KeyStore
    from api.migrations import migrate as apply
    from api.warehouse import WarehouseLocked, open_warehouse

    settings = get_settings()
    try:
        warehouse = open_warehouse(settings)
    except WarehouseLocked as exc:
        typer.echo(
            f"error: WarehouseLocked: {exc}\n"
            "A running `agentledger api` holds the embedded warehouse. Go through it with "
            "--api http://HOST:PORT --admin-key <admin key>, or stop it and run this again.",
            err=True,
        )
        raise typer.Exit(2) from None
    try:
        apply(warehouse, settings.database)
        yield KeyStore(warehouse, settings.database, cache_s=0)
    finally:
        warehouse.close()


def _key_json(key: Any) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "scopes": sorted(key.scopes),
        "team": key.team,
        "created_at": key.created_at.isoformat() if key.created_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


@keys.command("create")
def keys_create(
    scope: Annotated[list[str], typer.Option(help="ingest, reports:read, budgets:write or admin (repeatable)")],
    team: Annotated[str | None, typer.Option(help="Restrict the key to this team's data")] = None,
    name: Annotated[str, typer.Option(help="A note on what the key is for")] = "",
    api_url: ApiUrl = None,
    admin_key: AdminKey = None,
) -> None:
    """Create a key and print it as JSON; its `key` is shown this once and never stored."""
    if api_url:
        body = _api_call(api_url, admin_key, "POST", "/v1/keys", json={"scopes": scope, "team": team, "name": name})
    else:
        from api.keys import InvalidKeySpec

        with _key_store() as store:
            try:
                key, text = store.create(scope, team=team, name=name)
            except InvalidKeySpec as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
            body = {**_key_json(key), "key": text}
    typer.echo(json.dumps(body, indent=2))
    typer.echo("store the key now: it cannot be shown again", err=True)


@keys.command("revoke")
def keys_revoke(key_id: str, api_url: ApiUrl = None, admin_key: AdminKey = None) -> None:
    """Revoke a key; a running API stops accepting it within AGENTLEDGER_AUTH_CACHE_S."""
    if api_url:
        body = _api_call(api_url, admin_key, "DELETE", f"/v1/keys/{key_id}")
    else:
        from api.keys import UnknownKey

        with _key_store() as store:
            try:
                body = _key_json(store.revoke(key_id))
            except UnknownKey as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from None
    typer.echo(json.dumps(body, indent=2))


@keys.command("list")
def keys_list(
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys")] = False,
    api_url: ApiUrl = None,
    admin_key: AdminKey = None,
) -> None:
    """List keys (ids, scopes, teams; never secrets) as JSON."""
    if api_url:
        body = _api_call(api_url, admin_key, "GET", "/v1/keys", params={"include_revoked": include_revoked})
    else:
        with _key_store() as store:
            body = [_key_json(k) for k in store.list_keys(include_revoked=include_revoked)]
    typer.echo(json.dumps(body, indent=2))


periods = typer.Typer(help="Billing periods (calendar months, UTC): close a month for good.", no_args_is_help=True)
app.add_typer(periods, name="periods")


@contextmanager
def _warehouse() -> Iterator[Any]:
    from api.migrations import migrate as apply
    from api.warehouse import WarehouseLocked, open_warehouse

    settings = get_settings()
    try:
        warehouse = open_warehouse(settings)
    except WarehouseLocked as exc:
        typer.echo(
            f"error: WarehouseLocked: {exc}\n"
            "A running `agentledger api` holds the embedded warehouse: pass --api http://HOST:PORT "
            "--admin-key <admin key>, or stop it and run this again.",
            err=True,
        )
        raise typer.Exit(2) from None
    try:
        apply(warehouse, settings.database)
        yield warehouse
    finally:
        warehouse.close()


@periods.command("close")
def periods_close(
    period: Annotated[str, typer.Argument(help="The month, YYYY-MM")],
    api_url: ApiUrl = None,
    admin_key: AdminKey = None,
) -> None:
    """Close a month: later events for it are charged in the next open month."""
    if api_url:
        body = _api_call(api_url, admin_key, "POST", f"/v1/periods/{period}/close")
    else:
        from api.errors import InvalidParameter
        from api.periods import close_period, parse_period

        with _warehouse() as warehouse:
            try:
                close, _ = close_period(warehouse, get_settings().database, parse_period(period), closed_by="cli")
            except InvalidParameter as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
        body = {
            "period": f"{close.period:%Y-%m}",
            "closed_at": close.closed_at.isoformat(),
            "closed_by": close.closed_by,
        }
    typer.echo(json.dumps(body, indent=2))


@periods.command("list")
def periods_list(api_url: ApiUrl = None, admin_key: AdminKey = None) -> None:
    """List closed months."""
    if api_url:
        body = _api_call(api_url, admin_key, "GET", "/v1/periods")
    else:
        from api.periods import list_closes

        with _warehouse() as warehouse:
            closes = list_closes(warehouse, get_settings().database)
        body = {
            "closed": [
                {"period": f"{c.period:%Y-%m}", "closed_at": c.closed_at.isoformat(), "closed_by": c.closed_by}
                for c in closes
            ]
        }
    typer.echo(json.dumps(body, indent=2))


@app.command()
def reprice(
    start: Annotated[str, typer.Option("--from", help="Event time, inclusive (ISO 8601; UTC when no zone)")],
    end: Annotated[str, typer.Option("--to", help="Event time, exclusive")],
    rate_card: Annotated[Path, typer.Option("--rate-card", help="The rate card YAML to re-price under")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the differences, send nothing")] = False,
    api_url: ApiUrl = None,
    admin_key: AdminKey = None,
) -> None:
    """Re-price a time range under a rate card; the differences become adjustment events."""
    try:
        text = rate_card.read_text(encoding="utf-8")
    except OSError as exc:
        typer.echo(f"error: cannot read {rate_card}: {exc}", err=True)
        raise typer.Exit(2) from None
    request = {"from": start, "to": end, "rate_card": text, "dry_run": dry_run}
    if api_url:
        body = _api_call(api_url, admin_key, "POST", "/v1/reprice", json=request)
    else:
        from pydantic import ValidationError

        from api.errors import ApiError
        from api.repricing import RepriceError, emit, plan
        from api.routes.repricing import RepriceRequest, check_request, response_of
        from processors.errors import RateCardError
        from processors.ratecard import parse_rate_card

        try:
            parsed = RepriceRequest.model_validate(request)
            check_request(parsed)
            card = parse_rate_card(text)
            with _warehouse() as warehouse:
                result = plan(warehouse, get_settings(), card, parsed.start, parsed.end)
            if not dry_run:
                emit(get_settings(), result)
        except (ValidationError, ApiError, RateCardError, RepriceError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        body = response_of(result).model_dump(mode="json", by_alias=True)
    typer.echo(json.dumps(body, indent=2))


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


if __name__ == "__main__":
    app()
