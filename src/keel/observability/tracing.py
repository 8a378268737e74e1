"""W3C Trace Context for every request, and one structured log line per request.

An incoming valid `traceparent` is continued (its span becomes our parent); an invalid or
missing one starts a new trace. The response carries our `traceparent` and an `X-Request-ID`.
This is the outermost middleware, so even requests the guard rejects are traced and logged.
"""

from __future__ import annotations

import re
import time
from random import getrandbits

from starlette.types import ASGIApp, Receive, Scope, Send

from keel.core.context import (
    TraceContext,
    reset_trace,
    response_record,
    set_trace,
)
from keel.observability.logging import get_logger

__all__ = ["TraceMiddleware", "new_trace", "parse_traceparent"]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def parse_traceparent(value: str) -> tuple[str, str, bool] | None:
    """`(trace_id, parent_span_id, sampled)` from a `traceparent` value, or None if invalid."""
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


_LOW_64 = (1 << 64) - 1


def _random_ids() -> tuple[str, str]:
    """A new non-zero trace id (32 hex) and span id (16 hex), from one draw."""
    # Trace ids must be unique and non-zero, not secret: the module PRNG (reseeded at fork)
    # is cheaper than a system call per request.
    while True:
        value = getrandbits(192)
        if value >> 64 and value & _LOW_64:
            ids = f"{value:048x}"
            return ids[:32], ids[32:]


def new_trace(traceparent: str | None = None, request_id: str | None = None) -> TraceContext:
    """A new span: a child of `traceparent` when valid, else the root of a new trace."""
    parsed = parse_traceparent(traceparent) if traceparent else None
    trace_id, span_id = _random_ids()
    if parsed is None:
        parent, sampled = None, True
    else:
        trace_id, parent, sampled = parsed
    if request_id is None or _REQUEST_ID.fullmatch(request_id) is None:
        request_id = trace_id
    return TraceContext(trace_id, span_id, parent, sampled, request_id)


class TraceMiddleware:
    """Start a span per request, expose it to logs and errors, and log the request's outcome."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        self.logger = get_logger("keel.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        traceparent = request_id = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"x-request-id":
                request_id = value.decode("latin-1")
        trace = new_trace(traceparent, request_id)
        # The outermost middleware: the record (and the `send` that applies it) starts here.
        record, send_wrapper = response_record(scope, send)
        record.headers.append((b"traceparent", trace.traceparent.encode()))
        record.headers.append((b"x-request-id", trace.request_id.encode()))
        started = time.perf_counter()

        token = set_trace(trace)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if self.access_log and scope["type"] == "http":
                self.logger.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=record.status or 500,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    client=scope["client"][0] if scope.get("client") else None,
                )
            reset_trace(token)
