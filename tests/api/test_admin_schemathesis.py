"""Schemathesis over the admin endpoints' OpenAPI schema, in process: no input gives a 5xx."""

from __future__ import annotations

import pytest

from api.app import create_app
from api.migrations import migrate
from tests.api.schemathesis_run import assert_no_server_errors

pytestmark = pytest.mark.integration


def test_admin_endpoints_never_answer_5xx(settings_factory, warehouse_factory):
    settings = settings_factory(auth="disabled")
    wh = warehouse_factory(settings)
    migrate(wh, settings.database)
    # writes to budgets would fill the topic with generated policies; reads and the rest suffice
    assert_no_server_errors(
        create_app(settings, wh, with_sink=False),
        lambda schema: schema.include(path_regex=r"^/v1/(budgets|sessions|alerts|prices|periods|reprice)").exclude(
            method=["PUT", "POST", "DELETE"], path_regex=r"^/v1/budgets"
        ),
        max_examples=60,
    )
