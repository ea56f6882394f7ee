"""Schemathesis over the reports' OpenAPI schema, in process (ASGI): no input gives a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error

from api.app import create_app
from api.migrations import migrate
from tests.api.test_reports_pipeline import delete_topics

pytestmark = pytest.mark.integration


def test_report_endpoints_never_answer_5xx(settings_factory, warehouse_factory, priced_event_factory):
    settings = settings_factory(auth="disabled")
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    app = create_app(settings, wh, with_sink=False)
    with TestClient(app):  # runs the lifespan: app.state is set for the calls below
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        schema = schema.include(path_regex=r"^/v1/(chargeback|reports/)")
        seen = []

        @hsettings(
            max_examples=40,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=schema.as_strategy())
        def run(case):
            response = case.call()
            seen.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        run()
        assert len(seen) >= 40
        assert all(code < 500 for code in seen)
    delete_topics(settings)
