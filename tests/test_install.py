"""`keel.install(app)`: a plain FastAPI app gains the whole kernel with one call."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

import keel
from keel import Config
from tests.conftest import client_for


async def test_install_adds_health_metrics_tracing_errors_and_protections(
    config: Config,
) -> None:
    """One call gives health, readiness, metrics, traceparent, problem+json and the guard."""
    events: list[str] = []

    @asynccontextmanager
    async def own_lifespan(_app: FastAPI) -> AsyncIterator[None]:
        events.append("user startup")
        yield
        events.append("user shutdown")

    application = FastAPI(lifespan=own_lifespan)

    @application.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    kernel = keel.install(application, config)
    async with LifespanManager(application), client_for(application) as http:
        assert kernel.running, "the kernel starts with the app"
        assert events == ["user startup"]
        hello_response = await http.get("/hello")
        assert hello_response.json() == {"hello": "world"}
        assert hello_response.headers["traceparent"].startswith("00-")
        assert "content-security-policy" in hello_response.headers
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        assert 'route="/hello"' in (await http.get("/metrics")).text
        missing = await http.get("/missing")
        assert missing.headers["content-type"] == "application/problem+json"
        assert (await http.get("/hello", headers={"host": "evil.example"})).status_code == 400
    assert events == ["user startup", "user shutdown"]
    assert not kernel.running


async def test_keel_server_pages(client: httpx.AsyncClient) -> None:
    """The landing page, OpenAPI document and API reference are served, with local assets."""
    landing = await client.get("/")
    assert landing.status_code == 200
    assert "Keel is running" in landing.text
    assert keel.__version__ in landing.text
    assert "SQLite" in landing.text or "PostgreSQL" in landing.text
    assert 'href="/api/v1/docs"' in landing.text
    openapi = await client.get("/api/v1/openapi.json")
    assert openapi.json()["info"]["title"] == "Keel"
    assert "/readyz" in openapi.json()["paths"]
    document = openapi.json()
    login_responses = document["paths"]["/api/v1/auth/session"]["post"]["responses"]
    assert set(login_responses) >= {"401", "422", "429", "500"}
    problem = login_responses["422"]["content"]["application/problem+json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/Problem"}
    assert "Problem" in document["components"]["schemas"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    docs = await client.get("/api/v1/docs")
    assert docs.status_code == 200
    for page in (landing, docs):
        scripts = re.findall(r"<script\b[^>]*>", page.text)
        assert all("src=" in tag for tag in scripts), "no inline script"
        assert "style=" not in page.text and "<style" not in page.text
        assert "http://" not in page.text.replace("http://127.0.0.1", "")
        assert "https://" not in page.text
    for asset in (
        "/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/static/vendor/swagger-ui/swagger-ui.css",
        "/static/keel-docs.js",
        "/static/keel.css",
    ):
        assert asset in docs.text or asset in landing.text
        response = await client.get(asset)
        assert response.status_code == 200, asset


async def test_kernel_routes_survive_a_root_mount_and_yield_to_app_routes(
    config: Config, tmp_path: Path
) -> None:
    """An SPA mounted at "/" does not hide /healthz; an app's own /readyz replaces Keel's."""
    from fastapi.staticfiles import StaticFiles

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<p>spa</p>")
    application = FastAPI()

    @application.get("/readyz")
    async def own_readiness() -> dict[str, str]:
        return {"mine": "yes"}

    application.mount("/", StaticFiles(directory=tmp_path / "site", html=True), name="spa")
    keel.install(application, config)
    async with LifespanManager(application), client_for(application) as http:
        assert (await http.get("/healthz")).json()["status"] == "ok"
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/readyz")).json() == {"mine": "yes"}
        assert "spa" in (await http.get("/")).text
