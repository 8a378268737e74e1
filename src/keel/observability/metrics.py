"""Prometheus metrics: one registry per kernel, HTTP metrics labelled by route *template*.

Labels never carry raw paths, ids or query strings, so cardinality stays bounded however many
distinct URLs clients send: an unmatched path is counted as `<unmatched>`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel._version import __version__

__all__ = ["HttpMetrics", "MetricsMiddleware", "metrics_endpoint", "new_registry"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
UNMATCHED = "<unmatched>"


def new_registry() -> CollectorRegistry:
    """A registry with process and platform collectors and Keel's build info."""
    # `*_created` series double the exposition for no use in Prometheus queries.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    Gauge("keel_build_info", "Keel version running.", ["version"], registry=registry).labels(
        version=__version__
    ).set(1)
    return registry


class HttpMetrics:
    """The HTTP request counters and latency histogram."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["method", "route", "status_class"]
        self.requests = Counter(
            "keel_http_requests_total", "HTTP requests answered.", labels, registry=registry
        )
        self.latency = Histogram(
            "keel_http_request_duration_seconds",
            "Time from request start to the end of the response.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            "keel_http_requests_in_progress", "HTTP requests being handled.", registry=registry
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        labels = (method if method in _METHODS else "OTHER", route, f"{status // 100}xx")
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)


def _plain_route_paths(app: Any) -> dict[Any, str]:
    """Endpoint → path template for routes that do not record themselves in the scope."""
    paths: dict[Any, str] = {}
    for route in getattr(app, "routes", ()):
        endpoint = getattr(route, "endpoint", None)
        path_format = getattr(route, "path_format", None)
        if endpoint is not None and isinstance(path_format, str):
            paths.setdefault(endpoint, path_format)
    return paths


def route_template(scope: Scope, root_path: str, plain_routes: Mapping[Any, str]) -> str:
    """The matched route's path template (`/api/v1/jobs/{job_id}`), never the raw path."""
    mounted = scope.get("root_path", root_path) or ""
    path_format = getattr(scope.get("route"), "path_format", None)
    if isinstance(path_format, str):
        return mounted + path_format
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return UNMATCHED
    if mounted != root_path:
        return f"{mounted}/{{path}}"
    try:
        return plain_routes.get(endpoint, UNMATCHED)
    except TypeError:  # an unhashable endpoint
        return UNMATCHED


class MetricsMiddleware:
    """Count and time every HTTP request by method, route template and status class."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._plain_routes: dict[int, dict[Any, str]] = {}

    def _plain_routes_of(self, scope: Scope) -> Mapping[Any, str]:
        app = scope.get("app")
        key = id(app)
        if key not in self._plain_routes:
            self._plain_routes[key] = _plain_route_paths(app)
        return self._plain_routes[key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root_path = scope.get("root_path", "")
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_progress.dec()
            self.metrics.observe(
                scope["method"],
                route_template(scope, root_path, self._plain_routes_of(scope)),
                status,
                time.perf_counter() - started,
            )


def metrics_endpoint(registry: CollectorRegistry) -> Response:
    """The Prometheus text exposition of `registry`."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
