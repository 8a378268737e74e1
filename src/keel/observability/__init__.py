"""Observability: structured logs, W3C tracing, Prometheus metrics, health and readiness."""

from keel.observability.health import CheckFailed, ReadinessCheck, health_router
from keel.observability.logging import configure_logging, get_logger
from keel.observability.metrics import HttpMetrics, MetricsMiddleware, new_registry
from keel.observability.tracing import TraceMiddleware, new_trace, parse_traceparent

__all__ = [
    "CheckFailed",
    "HttpMetrics",
    "MetricsMiddleware",
    "ReadinessCheck",
    "TraceMiddleware",
    "configure_logging",
    "get_logger",
    "health_router",
    "new_registry",
    "new_trace",
    "parse_traceparent",
]
