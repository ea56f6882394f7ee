"""Export the JSON Schema of every contract model into schemas/json/ (checked by a test)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.budgets import Alert, BudgetPolicy, PolicyRecord, SessionStatus, Signal
from schemas.events import CostEvent, DeadLetter, PricedEvent

EXPORTED: dict[str, type[BaseModel]] = {
    "cost-event.v1": CostEvent,
    "priced-event.v1": PricedEvent,
    "dead-letter.v1": DeadLetter,
    "budget-policy.v1": BudgetPolicy,
    "budget-policy-record.v1": PolicyRecord,
    "signal.v1": Signal,
    "session-status.v1": SessionStatus,
    "alert.v1": Alert,
}
JSON_DIR = Path(__file__).parent / "json"


def render(model: type[BaseModel]) -> str:
    return json.dumps(model.model_json_schema(mode="validation"), indent=2, sort_keys=True) + "\n"


def export(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in EXPORTED.items():
        path = directory / f"{name}.schema.json"
        path.write_text(render(model))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in export():
        print(p)
