"""Keel's own pages: the landing page at `/` and the API reference at `/api/v1/docs`.

Every asset is served by Keel itself (no CDN): deployments may be offline, and the CSP allows
only same-origin scripts and styles, so no page here has inline script or style.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from keel._version import __version__
from keel.core.guards import public

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["install_pages"]

_HERE = Path(__file__).parent
_templates = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(default=True),
    auto_reload=False,
)

_DIALECTS = {"sqlite": "SQLite (embedded)", "postgresql": "PostgreSQL"}


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def install_pages(app: FastAPI, keel: Keel, *, api_prefix: str) -> None:
    """Add the landing page, the API reference and `/static` to Keel's own app."""
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    landing = _templates.get_template("landing.html")
    docs = _templates.get_template("docs.html")
    openapi_url = app.openapi_url or f"{api_prefix}/openapi.json"

    @app.get(
        "/",
        include_in_schema=False,
        response_class=HTMLResponse,
        dependencies=[Depends(public)],
    )
    async def landing_page(request: Request) -> HTMLResponse:
        html = landing.render(
            version=__version__,
            database=_DIALECTS.get(keel.db.dialect, keel.db.dialect),
            instance_id=keel.instance_id,
            uptime=_uptime(time.monotonic() - keel.started_at),
            docs_enabled=keel.config.docs_enabled,
            docs_url=f"{api_prefix}/docs",
            openapi_url=openapi_url,
            metrics_enabled=keel.config.metrics_enabled,
            links=keel.landing_links(),
            modules=[module.name for module in keel.modules],
        )
        return HTMLResponse(html)

    if keel.config.docs_enabled:

        @app.get(
            f"{api_prefix}/docs",
            include_in_schema=False,
            response_class=HTMLResponse,
            dependencies=[Depends(public)],
        )
        async def api_reference() -> HTMLResponse:
            return HTMLResponse(docs.render(version=__version__, openapi_url=openapi_url))
