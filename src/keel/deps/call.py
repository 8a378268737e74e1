"""Degrading gracefully: a fallback when a dependency is unavailable, and queue-on-outage."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from keel.deps.client import http, runtime
from keel.deps.errors import DependencyUnavailable
from keel.deps.spec import dependency
from keel.jobs import enqueue
from keel.jobs.models import Job

__all__ = ["MISSING", "accepted", "call", "queue_on_outage"]

T = TypeVar("T")
MISSING: Any = object()
_LAST_GOOD_LIMIT = 1000


async def call(
    name: str,
    fn: Callable[[httpx.AsyncClient], Awaitable[T]],
    *,
    fallback: Any = MISSING,
    cache_key: str | None = None,
) -> T:
    """`await fn(http(name))`; when the dependency is unavailable, the last good result for
    `cache_key` (when given and known), else `fallback` (a value, or a function of the
    `DependencyUnavailable`, sync or async), else the error itself."""
    name = dependency(name).name  # one cache and one count per dependency
    rt = runtime()
    try:
        result = await fn(http(name))
    except DependencyUnavailable as exc:
        if cache_key is not None and (name, cache_key) in rt.last_good:
            if rt.metrics is not None:
                rt.metrics.fallbacks.labels(name).inc()
            return rt.last_good[(name, cache_key)]  # type: ignore[no-any-return]
        if fallback is MISSING:
            raise
        if rt.metrics is not None:
            rt.metrics.fallbacks.labels(name).inc()
        if callable(fallback):
            value = fallback(exc)
            if inspect.isawaitable(value):
                value = await value
            return value  # type: ignore[no-any-return]
        return fallback  # type: ignore[no-any-return]
    if cache_key is not None:
        if len(rt.last_good) >= _LAST_GOOD_LIMIT and (name, cache_key) not in rt.last_good:
            rt.last_good.pop(next(iter(rt.last_good)))
        rt.last_good[(name, cache_key)] = result
    return result


async def queue_on_outage(
    session: AsyncSession,
    name: str,
    kind: str,
    args: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
) -> Job:
    """Turn "dependency unavailable" into a durable job: enqueue `kind(args)` in the caller's
    transaction. The job's handler calls the dependency; while it is unavailable the job
    fails with class `dependency_unavailable` and is retried after the breaker's `Retry-After`,
    so it runs once the dependency is back (give the kind enough `max_attempts`)."""
    dependency(name)  # a typo in the name fails here, not in the worker
    return await enqueue(session, kind, dict(args), idempotency_key=idempotency_key)


def accepted(job: Job) -> JSONResponse:
    """The 202 answer for a queued request: the job's id and where to follow it."""
    link = f"/api/v1/jobs/{job.id}"
    return JSONResponse(
        {"job_id": job.id, "state": job.state, "href": link},
        status_code=202,
        headers={"Location": link},
    )
