"""Metrics: Prometheus text, labelled by route template and status class, never raw paths."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from keel import Keel


async def test_metrics_use_route_templates(
    user_client: httpx.AsyncClient, user_app: tuple[FastAPI, Keel]
) -> None:
    """Requests to /items/1 and /items/2 count under /items/{item_id}, not their paths."""
    await user_client.post("/items", json={"name": "a"})
    for item in (1, 2, 3):
        await user_client.get(f"/items/{item}")
    for path in ("/random-1", "/random-2"):
        await user_client.get(path)
    text = (await user_client.get("/metrics")).text
    assert (
        'keel_http_requests_total{method="GET",route="/items/{item_id}",status_class="2xx"} 1.0'
        in text
    )
    assert (
        'keel_http_requests_total{method="GET",route="/items/{item_id}",status_class="4xx"} 2.0'
        in text
    )
    assert 'route="<unmatched>",status_class="4xx"} 2.0' in text
    assert "/items/1" not in text and "random-1" not in text
    assert 'keel_http_request_duration_seconds_bucket{le="0.005",method="POST"' in text
    assert "keel_build_info" in text
    assert "process_cpu_seconds_total" in text


async def test_plain_routes_and_mounts_are_templated(client: httpx.AsyncClient) -> None:
    """Keel's own non-API routes (openapi) and mounts (static) get templates too."""
    await client.get("/api/v1/openapi.json")
    await client.get("/static/keel.css")
    text = (await client.get("/metrics")).text
    assert 'route="/api/v1/openapi.json"' in text
    assert 'route="/static/{path}"' in text
    assert "keel.css" not in text


async def test_server_errors_are_counted(user_client: httpx.AsyncClient) -> None:
    """An unhandled exception is counted as 5xx."""
    await user_client.get("/boom")
    text = (await user_client.get("/metrics")).text
    assert 'keel_http_requests_total{method="GET",route="/boom",status_class="5xx"} 1.0' in text
