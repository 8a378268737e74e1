"""Resilient dependencies: declared external APIs called with timeouts, retries, a circuit
breaker and a bulkhead; fallbacks and queue-on-outage; a monitor with incidents, maintenance
windows and a public status page."""

from keel.deps.call import accepted, call, queue_on_outage
from keel.deps.client import http
from keel.deps.errors import DependencyUnavailable
from keel.deps.spec import (
    Breaker,
    Bulkhead,
    Dependency,
    Probe,
    Public,
    Retry,
    Timeouts,
    declare,
    declared,
    dependency,
)

__all__ = [
    "Breaker",
    "Bulkhead",
    "Dependency",
    "DependencyUnavailable",
    "Probe",
    "Public",
    "Retry",
    "Timeouts",
    "accepted",
    "call",
    "declare",
    "declared",
    "dependency",
    "http",
    "queue_on_outage",
]
