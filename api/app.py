"""The FastAPI application: reports over the warehouse, and in embedded mode the sink too."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agentledger.settings import Settings
from api.admin import AdminServices
from api.auth import check_auth_settings
from api.dashboard import router as dashboard_router
from api.errors import ApiError, InvalidParameter, WarehouseUnavailable
from api.keys import KeyStore
from api.migrations import migrate
from api.producer import EventProducer
from api.routes import (
    alerts,
    budgets,
    chargeback,
    ingest,
    keys,
    periods,
    prices,
    reports,
    repricing,
    sessions,
    signals,
)
from api.sink import Sink
from api.warehouse import Warehouse, WarehouseError, open_warehouse

log = structlog.get_logger(__name__)


def _run_sink(sink: Sink, stop: threading.Event, app: FastAPI) -> None:
    try:
        sink.run(stop)
    except Exception as exc:
        app.state.sink_error = str(exc)
        log.exception("sink.crashed")


def create_app(settings: Settings, warehouse: Warehouse | None = None, *, with_sink: bool) -> FastAPI:
    """The API. Without `warehouse`, the lifespan opens one from settings and closes it.

    With `with_sink`, the sink runs as a thread of this process (embedded mode needs that:
    one process per chDB folder) and stops with the app."""
    check_auth_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = warehouse is None
        wh = open_warehouse(settings) if owned else warehouse
        assert wh is not None
        app.state.settings = settings
        app.state.warehouse = wh
        app.state.sink = None
        app.state.sink_error = None
        app.state.keys = KeyStore(wh, settings.database, cache_s=settings.auth_cache_s)
        app.state.producer = None
        app.state.admin = None
        app.state.signal_relay = None
        stop = threading.Event()
        thread = None
        try:
            migrate(wh, settings.database)
            app.state.producer = EventProducer(settings)
            if with_sink:
                app.state.sink = Sink(settings, wh)
                thread = threading.Thread(
                    target=_run_sink, args=(app.state.sink, stop, app), name="agentledger-sink", daemon=True
                )
                thread.start()
            app.state.admin = AdminServices(settings, wh, with_sink=with_sink)
            yield
        finally:
            stop.set()
            if app.state.signal_relay is not None:
                app.state.signal_relay.close()
            if thread is not None:
                thread.join(timeout=60)
            if app.state.admin is not None:
                app.state.admin.close()
            if app.state.producer is not None:
                app.state.producer.close()
                app.state.producer = None  # librdkafka's client lives as long as a reference does
            if owned:
                wh.close()

    app = FastAPI(
        title="agentledger",
        summary="Cost accounting and chargeback for AI agents",
        version="0.1.0",
        lifespan=lifespan,
    )

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"error": exc.to_dict()}, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own parameter checks (a malformed datetime, ...) in the same shape as ours.
        first = exc.errors()[0] if exc.errors() else {}
        loc = first.get("loc") or ("request",)
        return await api_error(request, InvalidParameter(str(first.get("msg", "invalid request")), field=str(loc[-1])))

    @app.exception_handler(WarehouseError)
    async def warehouse_error(request: Request, exc: WarehouseError) -> JSONResponse:
        log.error("warehouse.error", path=request.url.path, error=str(exc))
        return await api_error(request, WarehouseUnavailable("the warehouse could not answer"))

    @app.get("/healthz", tags=["ops"])
    def healthz(request: Request) -> dict[str, object]:
        state = request.app.state
        sink = state.sink
        return {
            "status": "ok" if state.sink_error is None else "degraded",
            "backend": state.warehouse.backend,
            "sink": None
            if sink is None
            else {"rows_inserted": sink.rows_inserted, "batches": sink.batches, "error": state.sink_error},
        }

    @app.get("/readyz", tags=["ops"])
    def readyz(request: Request) -> JSONResponse:
        """200 when this process can serve: the warehouse answers and, where this process runs
        the sink, its thread is alive and has not failed. 503 otherwise, naming what is not."""
        state = request.app.state
        problems: list[str] = []
        try:
            state.warehouse.query("SELECT 1 AS ok")
        except WarehouseError as exc:
            problems.append(f"warehouse: {exc}")
        if state.sink_error is not None:
            problems.append(f"sink: {state.sink_error}")
        elif with_sink and not any(t.name == "agentledger-sink" and t.is_alive() for t in threading.enumerate()):
            problems.append("sink: not running")
        status = 503 if problems else 200
        return JSONResponse(status_code=status, content={"ready": not problems, "problems": problems})

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(chargeback.router)
    app.include_router(reports.router)
    app.include_router(ingest.router)
    app.include_router(keys.router)
    app.include_router(signals.router)
    for admin_router in (budgets, sessions, alerts, prices, periods, repricing):
        app.include_router(admin_router.router)
    app.include_router(dashboard_router)
    return app
