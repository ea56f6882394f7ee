"""One schemathesis run over part of the app's OpenAPI schema, in process (ASGI)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error


def assert_no_server_errors(app: FastAPI, select: Callable[[Any], Any], max_examples: int) -> list[int]:
    """Generate `max_examples` requests for the operations `select(schema)` keeps; none may
    answer 5xx. Returns the status codes seen."""
    with TestClient(app):  # runs the lifespan: app.state is set for the calls below
        schema = select(schemathesis.openapi.from_asgi("/openapi.json", app))
        seen: list[int] = []

        @hsettings(
            max_examples=max_examples,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=schema.as_strategy())
        def run(case: Any) -> None:
            response = case.call()
            seen.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        run()
    assert len(seen) >= max_examples
    assert all(code < 500 for code in seen)
    return seen
