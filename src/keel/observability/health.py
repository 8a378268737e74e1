"""Liveness (`/healthz`) and readiness (`/readyz`).

Liveness says only that the process answers. Readiness runs every registered check at once,
each bounded by a timeout, and answers 503 naming the failing checks. Check failures are logged
in full but reported to the client only as a short reason: no hostnames, SQL or stack traces.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Depends
from starlette.responses import Response

from keel._version import __version__
from keel.core.errors import PROBLEM_CONTENT_TYPE, problem_body
from keel.core.guards import public
from keel.observability.logging import get_logger

__all__ = ["CheckFailed", "ReadinessCheck", "health_router", "run_checks"]

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""A readiness check: returns when healthy, raises `CheckFailed` (or anything) when not.

A healthy check may return a short note for operators (e.g. settings waiting for a restart);
it is shown as the check's `info` and does not make the process unready."""


class CheckFailed(Exception):
    """A readiness check failed; the message is safe to show to clients."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one readiness check."""

    ok: bool
    duration_ms: float
    reason: str | None = None
    info: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data: dict[str, Any] = {"ok": self.ok, "duration_ms": self.duration_ms}
        if self.reason:
            data["reason"] = self.reason
        if self.info:
            data["info"] = self.info
        return data


async def _run_one(name: str, check: ReadinessCheck, timeout: float) -> CheckResult:
    started = time.perf_counter()
    info: str | None = None
    try:
        note = await asyncio.wait_for(check(), timeout)
        info = note if isinstance(note, str) else None
    except CheckFailed as exc:
        reason: str | None = str(exc)
    except TimeoutError:
        reason = f"no answer within {timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; logged in full
        get_logger("keel.health").warning("readiness check failed", check=name, exc_info=exc)
        reason = "unreachable"
    else:
        reason = None
    elapsed = round((time.perf_counter() - started) * 1000, 2)
    return CheckResult(ok=reason is None, duration_ms=elapsed, reason=reason, info=info)


async def run_checks(
    checks: Mapping[str, ReadinessCheck], *, timeout: float
) -> dict[str, CheckResult]:
    """Run all checks concurrently; each gets at most `timeout` seconds."""
    names = list(checks)
    results = await asyncio.gather(*(_run_one(n, checks[n], timeout) for n in names))
    return dict(zip(names, results, strict=True))


def health_router(
    checks: Callable[[], Mapping[str, ReadinessCheck]],
    *,
    started_at: float,
    timeout: float = 3.0,
) -> APIRouter:
    """The `/healthz` and `/readyz` routes over the checks `checks()` returns."""
    router = APIRouter(tags=["health"], dependencies=[Depends(public)])

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - started_at, 3),
        }

    @router.get(
        "/readyz",
        summary="Readiness: database reachable, migrations at head, dependencies up",
        responses={503: {"description": "A check failed; the body names it."}},
    )
    async def readyz() -> Response:
        results = await run_checks(checks(), timeout=timeout)
        data = {name: result.as_dict() for name, result in results.items()}
        failing = [name for name, result in results.items() if not result.ok]
        if not failing:
            body = orjson.dumps({"status": "ready", "checks": data})
            return Response(body, media_type="application/json")
        body = problem_body(
            status=503,
            slug="not-ready",
            title="Not Ready",
            detail=f"failing: {', '.join(failing)}",
            extra={"status_text": "unavailable", "failing": failing, "checks": data},
        )
        return Response(
            body,
            status_code=503,
            media_type=PROBLEM_CONTENT_TYPE,
            headers={"Retry-After": "5", "Cache-Control": "no-store"},
        )

    return router
