"""The hook's librdkafka log lines: a broker that stays down is reported, not spammed."""

from __future__ import annotations

import logging

import pytest

from ingest.kafka_log import RepeatFilter

pytestmark = pytest.mark.unit


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("agentledger.ingest.kafka", logging.ERROR, __file__, 1, message, None, None)


def test_a_repeated_failure_passes_once_per_interval() -> None:
    f = RepeatFilter(interval=3600)
    refused = "FAIL [thrd:127.0.0.1:19092/bootstrap]: Connect failed: Connection refused (after {}ms in state CONNECT)"
    assert f.filter(record(refused.format(0))) is True
    assert [f.filter(record(refused.format(ms))) for ms in (1, 12, 250)] == [False, False, False]
    assert f.filter(record("FAIL [thrd:127.0.0.1:19092/bootstrap]: Disconnected")) is True


def test_the_same_failure_passes_again_after_the_interval() -> None:
    f = RepeatFilter(interval=0.0)
    assert f.filter(record("Connection refused")) is True
    assert f.filter(record("Connection refused")) is True
