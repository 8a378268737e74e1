"""Prometheus metrics: one registry per kernel, HTTP metrics labelled by route *template*.

Labels never carry raw paths, ids or query strings, so cardinality stays bounded however many
distinct URLs clients send: an unmatched path is counted as `<unmatched>`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from keel._version import __version__
from keel.core.context import response_record

__all__ = ["HttpMetrics", "MetricsMiddleware", "metrics_endpoint", "new_registry"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_BUCKET_LABELS = (*(repr(bound) for bound in _LATENCY_BUCKETS), "+Inf")
_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
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


class _Series:
    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.count = 0
        self.total = 0.0


class HttpMetrics(Collector):
    """HTTP request counts and latency histogram, per method, route template and status class.

    Recorded on the event loop with plain integer arithmetic (no lock, no label lookup
    through prometheus_client on the hot path) and turned into Prometheus families only when
    scraped, which also happens on the event loop.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._series: dict[tuple[str, str, str], _Series] = {}
        self.in_progress = 0
        registry.register(self)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        status_class = _STATUS_CLASSES.get(status // 100, "other")
        key = (method if method in _METHODS else "OTHER", route, status_class)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.buckets[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        series.count += 1
        series.total += seconds

    def answered(self, *, skip: frozenset[str] = frozenset()) -> tuple[int, int]:
        """Requests answered since the process started and how many of them were 5xx,
        leaving out the route templates in `skip`."""
        total = errors = 0
        for (_method, route, status_class), series in list(self._series.items()):
            if route in skip:
                continue
            total += series.count
            if status_class == "5xx":
                errors += series.count
        return total, errors

    def describe(self) -> Iterable[Metric]:
        """No up-front description: the families are built at collection."""
        return ()

    def collect(self) -> Iterable[Metric]:
        """The current values as Prometheus metric families."""
        labels = ["method", "route", "status_class"]
        requests = CounterMetricFamily(
            "keel_http_requests", "HTTP requests answered.", labels=labels
        )
        latency = HistogramMetricFamily(
            "keel_http_request_duration_seconds",
            "Time from request start to the end of the response.",
            labels=labels,
        )
        for key, series in list(self._series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(_BUCKET_LABELS, series.buckets, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            requests.add_metric(list(key), series.count)
            latency.add_metric(list(key), buckets, sum_value=series.total)
        in_progress = GaugeMetricFamily(
            "keel_http_requests_in_progress", "HTTP requests being handled.", self.in_progress
        )
        return (requests, latency, in_progress)


def _plain_route_paths(app: Any) -> dict[Any, str]:
    """Endpoint → path template for routes that do not record themselves in the scope."""
    paths: dict[Any, str] = {}
    for route in getattr(app, "routes", ()):
        endpoint = getattr(route, "endpoint", None)
        path_format = getattr(route, "path_format", None)
        if endpoint is not None and isinstance(path_format, str):
            paths.setdefault(endpoint, path_format)
    return paths


def route_template(
    scope: Scope, root_path: str, plain_routes: Callable[[Scope], Mapping[Any, str]]
) -> str:
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
        return plain_routes(scope).get(endpoint, UNMATCHED)
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
        record, send = response_record(scope, send)
        started = time.perf_counter()
        self.metrics.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.metrics.in_progress -= 1
            self.metrics.observe(
                scope["method"],
                route_template(scope, root_path, self._plain_routes_of),
                record.status or 500,
                time.perf_counter() - started,
            )


def metrics_endpoint(registry: CollectorRegistry) -> Response:
    """The Prometheus text exposition of `registry`."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
