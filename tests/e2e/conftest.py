"""The e2e tests reuse the worker subprocess and hook fixtures of the package tests."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.testclient import TestClient

from tests.ingest.conftest import hook
from tests.processors.conftest import worker_factory

__all__ = ["Stack", "hook", "worker_factory"]


@dataclass(frozen=True, slots=True)
class Stack:
    client: TestClient
    headers: dict[str, str]
