"""The chaos suite reuses the hook factory and the webhook receiver of the package tests."""

from __future__ import annotations

from tests.ingest.conftest import hook
from tests.processors.alerts.conftest import receiver

__all__ = ["hook", "receiver"]
