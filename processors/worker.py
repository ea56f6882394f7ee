"""`agentledger worker`: run the stream processor until SIGTERM or SIGINT.

Also runnable as `python -m processors.worker`, configured by AGENTLEDGER_* variables.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from agentledger import heap
from agentledger.kafka_admin import ensure_topics, wait_for_broker
from agentledger.settings import Settings

log = logging.getLogger(__name__)


def _serve_metrics(port: int) -> None:
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr="127.0.0.1")
    except OSError as exc:  # another worker on this machine has the port: run without /metrics
        log.warning("metrics server not started on port %d: %s", port, exc)


def freeze_heap_when_ready(app: Any) -> None:
    """Once the worker is ready, move everything that exists then out of the garbage collector's
    reach (`gc.freeze`): modules, faust, aiokafka, genai-prices' price data live as long as the
    process. A full collection then scans only what came later; it scanned all of it, 40-60 ms
    with the event loop stopped, a few times a minute (bench.signal_latency's outliers). Then the
    collector runs less often (`agentledger.heap.GC_THRESHOLDS`)."""

    async def freeze() -> None:
        await app.tables.recovery.completed.wait()
        from genai_prices import data_snapshot

        data_snapshot.get_snapshot()  # loaded on first use otherwise: after the freeze
        log.info("froze %d objects of the started worker", heap.settle())

    app.task(freeze)


def run(settings: Settings, *, loglevel: str = "warning") -> None:
    """Wait for Kafka, create the topics, load the budget policies and process events until
    SIGTERM/SIGINT."""
    import faust

    from processors import eos
    from processors.app import LedgerApp

    wait_for_broker(settings)
    ensure_topics(settings)
    ledger = LedgerApp(settings)
    eos.ensure_changelog_topics(ledger.app, settings)
    ledger.policies.start()
    if ledger.preview is not None:
        ledger.preview.start()
    freeze_heap_when_ready(ledger.app)
    _serve_metrics(settings.worker_web_port)
    worker = faust.Worker(ledger.app, loglevel=loglevel, quiet=True)
    # faust's terminal spinner sets the root logger to DEBUG so that every record turns it:
    # aiokafka then builds a debug record for every message sent (about 3 per event)
    worker.spinner = None
    cry = worker._on_sigusr1

    def report() -> None:
        """SIGUSR1: mode's dump of every task's stack, and how each cost-events partition stands."""
        cry()
        try:
            log.warning("partitions: %s", ledger.partition_report())
        except Exception:
            log.exception("partition report failed")

    worker._on_sigusr1 = report  # type: ignore[method-assign]
    # mode enters pdb on SIGUSR2, which would stop a worker with nobody at its terminal
    worker._on_sigusr2 = report  # type: ignore[method-assign]
    try:
        # mode's worker installs SIGTERM/SIGINT handlers that stop the app cleanly
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        if ledger.preview is not None:
            ledger.preview.stop()
        ledger.signals.flush()
        ledger.policies.stop()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    run(Settings())


if __name__ == "__main__":
    main()
