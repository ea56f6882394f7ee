"""docker-compose.yml cannot run here (no Docker engine); these keep it in step with the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command

from agentledger.cli import app
from agentledger.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def project_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


def test_every_project_service_runs_an_existing_subcommand() -> None:
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    services = project_services()
    assert {"worker", "sink", "api", "migrate"} <= set(services)
    for name, service in services.items():
        assert service["command"][0] in commands, f"service {name} runs an unknown subcommand"


def test_every_environment_variable_is_a_setting() -> None:
    fields = {f"AGENTLEDGER_{name.upper()}" for name in Settings.model_fields} | {"CLICKHOUSE_URL"}
    for name, service in project_services().items():
        unknown = set(service["environment"]) - fields
        assert not unknown, f"service {name} sets variables no setting reads: {sorted(unknown)}"


def test_environment_values_validate_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for service in project_services().values():
        for key, value in service["environment"].items():
            monkeypatch.setenv(key, str(value))
        settings = Settings()
        assert settings.clickhouse_url == "http://agentledger:agentledger@clickhouse:8123"
        assert settings.kafka_bootstrap == "kafka:9092"


def test_dependencies_name_existing_services() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1].strip()
    assert ci in (ROOT / "README.md").read_text()
