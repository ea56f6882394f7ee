"""`run_sink` as its own process: consumes, and stops cleanly on SIGTERM with offsets committed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from api.warehouse.chdb import ChdbWarehouse
from tests.api.conftest import ROOT, committed_offsets, end_offsets

pytestmark = pytest.mark.integration


def test_run_sink_process_stops_cleanly_on_sigterm(settings_factory, priced_event_factory, produce_priced):
    settings = settings_factory(sink_batch_seconds=0.2)
    events = [priced_event_factory(cost="0.25") for _ in range(8)]
    produce_priced(settings, events)
    env = settings.environment()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from agentledger.settings import Settings; from api.sink import run_sink; "
         "run_sink(Settings())"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        want = {p: high for p, high in end_offsets(settings).items() if high > 0}

        def committed():
            return {p: o for p, o in committed_offsets(settings).items() if p in want}

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and committed() != want:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        assert committed() == want
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    # The folder is free again, and holds every event once.
    wh = ChdbWarehouse(settings.chdb_path)
    try:
        [row] = wh.query(
            "SELECT sum(cost) AS c, count() AS n FROM {db:Identifier}.priced_events", {"db": settings.database}
        )
    finally:
        wh.close()
    assert (row["c"], row["n"]) == (2, 8)
