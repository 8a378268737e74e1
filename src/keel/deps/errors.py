"""`DependencyUnavailable`: a dependency cannot be called now (breaker open, saturated, failing).

It is a 503 problem with `Retry-After` when it reaches a client, and a transient failure with
class `dependency_unavailable` (retried after `retry_after`) when it ends a job."""

from __future__ import annotations

import math

from keel.core.errors import ServiceUnavailable
from keel.jobs.registry import Transient

__all__ = ["REASONS", "DependencyUnavailable"]

REASONS = ("breaker_open", "saturated", "timeout", "connect", "status_5xx", "status_429")


class DependencyUnavailable(ServiceUnavailable, Transient):
    """A dependency this request needs is unavailable; try again later."""

    slug = "dependency-unavailable"
    title = "Dependency Unavailable"
    expose = True

    def __init__(self, dependency: str, reason: str, *, retry_after: float | None = None) -> None:
        self.dependency = dependency
        self.reason = reason
        self.retry_after = retry_after
        seconds = max(1, math.ceil(retry_after)) if retry_after is not None else None
        ServiceUnavailable.__init__(
            self,
            "A service this request depends on is unavailable; try again later.",
            headers={"Retry-After": str(seconds)} if seconds is not None else None,
        )

    def __str__(self) -> str:
        return f"dependency {self.dependency!r} unavailable ({self.reason})"
