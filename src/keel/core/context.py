"""Per-request context carried in contextvars: the trace a log line or error belongs to.

Pure-ASGI middleware sets it; anything below (services, errors, logs) reads it. It must never
hold request bodies or secrets.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple

from starlette.types import Message, Send

__all__ = [
    "RESPONSE_KEY",
    "ResponseRecord",
    "TraceContext",
    "current_trace",
    "reset_trace",
    "response_record",
    "set_trace",
]

RESPONSE_KEY = "keel.response"
"""Scope key of the request's `ResponseRecord`, set by the outermost (tracing) middleware."""


class ResponseRecord:
    """What the response has done so far, and the headers middleware want added to it.

    The outermost middleware (tracing) wraps `send` once; inner middleware (guard, rate
    limits, errors, metrics) read the status and add headers here instead of each wrapping
    `send` again, which costs a closure and a call per message per layer.
    """

    __slots__ = ("defaults", "headers", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        """Added to the response start, whatever the route set."""
        self.defaults: Sequence[tuple[bytes, bytes]] = ()
        """Added unless the route set a header of the same name (security headers)."""

    def finish(self, message: MutableMapping[str, Any]) -> None:
        """Record the status of an `http.response.start` and add the headers to it."""
        self.status = message["status"]
        existing = message.get("headers") or []
        defaults = self.defaults
        if defaults and existing:
            present = {bytes(name).lower() for name, _ in existing}
            if any(name in present for name, _ in defaults):
                # The route set one of these itself: its value wins.
                defaults = [item for item in defaults if item[0] not in present]
        if defaults or self.headers:
            message["headers"] = [*existing, *self.headers, *defaults]


def response_record(scope: MutableMapping[str, Any], send: Send) -> tuple[ResponseRecord, Send]:
    """The request's record and the `send` to use: the outer middleware's record when one
    runs outside, else a fresh record (kept in the scope) and a `send` that applies it."""
    record = scope.get(RESPONSE_KEY)
    if isinstance(record, ResponseRecord):
        return record, send
    record = scope[RESPONSE_KEY] = ResponseRecord()

    async def recording_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            record.finish(message)
        await send(message)

    return record, recording_send


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
