"""/readyz tells an orchestrator whether this API process can serve."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app

pytestmark = pytest.mark.integration


def test_ready_with_a_live_sink_and_not_after_it_failed(settings_factory) -> None:
    settings = settings_factory(auth="disabled")
    with TestClient(create_app(settings, with_sink=True)) as client:
        response = client.get("/readyz")
        assert (response.status_code, response.json()) == (200, {"ready": True, "problems": []})
        client.app.state.sink_error = "insert failed: code 241"  # type: ignore[attr-defined]
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["problems"] == ["sink: insert failed: code 241"]
