"""Routes of the dashboard: its pages, its own assets, and plotly.js from the plotly package."""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.resources
from functools import cache
from string import Template
from typing import Annotated

from fastapi import APIRouter, Header, Path
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.errors import NotFound

router = APIRouter(prefix="/dashboard", include_in_schema=False)

PAGES: dict[str, str] = {
    "overview": "Overview",
    "chargeback": "Chargeback",
    "budgets": "Budgets",
    "sessions": "Sessions",
    "login": "Log in",
}
ASSETS: dict[str, str] = {
    "app.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "overview.js": "text/javascript; charset=utf-8",
    "chargeback.js": "text/javascript; charset=utf-8",
    "budgets.js": "text/javascript; charset=utf-8",
    "sessions.js": "text/javascript; charset=utf-8",
    "login.js": "text/javascript; charset=utf-8",
}
"""The only files served from static/: an allow-list, so no path ever reaches the filesystem."""

# Styles inline: plotly.js injects its own <style> element. Everything else from this origin only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
ASSET_CACHE = "public, max-age=3600"


@cache
def _package_text(name: str) -> str:
    return importlib.resources.files("api.dashboard").joinpath(name).read_text(encoding="utf-8")


@cache
def plotly_version() -> str:
    return importlib.metadata.version("plotly")


@cache
def _plotly_bundle() -> tuple[bytes, bytes]:
    """plotly.min.js from the installed plotly package, and its gzip (about 4.8 and 1.4 MB)."""
    body = importlib.resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()
    return body, gzip.compress(body, compresslevel=6)


def render_page(page: str) -> str:
    return Template(_package_text("templates/page.html")).substitute(
        page=page, title=PAGES[page], plotly=f"/dashboard/static/plotly-{plotly_version()}.min.js"
    )


@router.get("")
def dashboard_root() -> RedirectResponse:
    return RedirectResponse("/dashboard/overview", status_code=307)


@router.get("/static/plotly-{version}.min.js")
def plotly_js(version: str, accept_encoding: Annotated[str | None, Header()] = None) -> Response:
    if version != plotly_version():
        raise NotFound("no such plotly.js version here", field="version")
    body, gzipped = _plotly_bundle()
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=31536000, immutable", "Vary": "Accept-Encoding"}
    if "gzip" in (accept_encoding or ""):
        return Response(gzipped, media_type=ASSETS["common.js"], headers={**headers, "Content-Encoding": "gzip"})
    return Response(body, media_type=ASSETS["common.js"], headers=headers)


@router.get("/static/{name}")
def asset(name: Annotated[str, Path(max_length=64)]) -> Response:
    media = ASSETS.get(name)
    if media is None:
        raise NotFound("no such dashboard asset", field="name")
    return Response(
        _package_text(f"static/{name}"), media_type=media, headers={**SECURITY_HEADERS, "Cache-Control": ASSET_CACHE}
    )


@router.get("/{page}", response_class=HTMLResponse)
def page(page: Annotated[str, Path(max_length=32)]) -> HTMLResponse:
    if page not in PAGES:
        raise NotFound("no such dashboard page", field="page")
    return HTMLResponse(render_page(page), headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})
