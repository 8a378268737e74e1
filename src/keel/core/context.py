"""Per-request context carried in contextvars: the trace a log line or error belongs to.

Pure-ASGI middleware sets it; anything below (services, errors, logs) reads it. It must never
hold request bodies or secrets.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import NamedTuple

__all__ = [
    "RESPONSE_KEY",
    "ResponseRecord",
    "TraceContext",
    "current_trace",
    "reset_trace",
    "set_trace",
]

RESPONSE_KEY = "keel.response"
"""Scope key of the request's `ResponseRecord`, set by the outermost (tracing) middleware."""


class ResponseRecord:
    """What the response has done so far, written once by the outermost middleware.

    Inner middleware (errors, metrics) read it instead of each wrapping `send` again.
    """

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status: int | None = None


class TraceContext(NamedTuple):
    """The W3C trace position of the current unit of work (a tuple: made once per request)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    sampled: bool
    request_id: str

    @property
    def traceparent(self) -> str:
        """This span as a `traceparent` header value."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


_current: ContextVar[TraceContext | None] = ContextVar("keel_trace", default=None)


def current_trace() -> TraceContext | None:
    """The trace of the running request or job, if any."""
    return _current.get()


def set_trace(trace: TraceContext | None) -> object:
    """Make `trace` current; returns a token for `reset_trace`."""
    return _current.set(trace)


def reset_trace(token: object) -> None:
    """Restore the trace that was current before `set_trace` returned `token`."""
    _current.reset(token)  # type: ignore[arg-type]
