"""`http(name)`: an httpx.AsyncClient whose transport applies the dependency's timeouts,
retries, breaker and bulkhead, and records a span and metrics for every attempt."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from keel.core.context import TraceContext, current_trace, reset_trace, set_trace
from keel.deps.breaker import CircuitBreaker
from keel.deps.errors import DependencyUnavailable
from keel.deps.spec import Dependency, dependency
from keel.observability.logging import get_logger

__all__ = ["IDEMPOTENT_METHODS", "ResilientTransport", "Runtime", "configure", "http", "runtime"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_logger = get_logger("keel.deps")


@dataclass
class _Metrics:
    calls: Any
    latency: Any
    breaker: Any
    in_flight: Any
    fallbacks: Any


def _new_metrics(registry: Any) -> _Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    return _Metrics(
        calls=Counter(
            "keel_dependency_calls_total",
            "Attempts of calls to dependencies, by outcome (ok or an error class).",
            ["dependency", "outcome"],
            registry=registry,
        ),
        latency=Histogram(
            "keel_dependency_call_seconds",
            "Duration of attempts of calls to dependencies.",
            ["dependency"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        ),
        breaker=Gauge(
            "keel_dependency_breaker_open",
            "1 while a dependency's breaker is open or half-open in this process.",
            ["dependency"],
            registry=registry,
        ),
        in_flight=Gauge(
            "keel_dependency_in_flight",
            "Calls to a dependency in flight in this process.",
            ["dependency"],
            registry=registry,
        ),
        fallbacks=Counter(
            "keel_dependency_fallbacks_total",
            "Calls answered by their fallback because the dependency was unavailable.",
            ["dependency"],
            registry=registry,
        ),
    )


class _Bulkhead:
    """At most `limit` calls in flight; waiting is bounded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._semaphore = asyncio.Semaphore(limit)

    async def acquire(self, name: str, wait: float) -> None:
        if self._semaphore.locked():
            if wait <= 0:
                raise DependencyUnavailable(name, "saturated", retry_after=1.0)
            try:
                await asyncio.wait_for(self._semaphore.acquire(), timeout=wait)
            except TimeoutError:
                raise DependencyUnavailable(name, "saturated", retry_after=1.0) from None
        else:
            await self._semaphore.acquire()
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._semaphore.release()


@dataclass
class Runtime:
    """What calls share in one process: breakers, bulkheads, clients, metrics, Redis."""

    redis: Any = None
    metrics: _Metrics | None = None
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    bulkheads: dict[str, _Bulkhead] = field(default_factory=dict)
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    last_good: dict[tuple[str, str], Any] = field(default_factory=dict)
    sleep: Any = asyncio.sleep

    def breaker(self, dep: Dependency) -> CircuitBreaker:
        found = self.breakers.get(dep.name)
        if found is None or found.policy != dep.breaker:
            found = self.breakers[dep.name] = CircuitBreaker(
                dep.name, dep.breaker, redis=self.redis
            )
        return found

    def bulkhead(self, dep: Dependency) -> _Bulkhead:
        found = self.bulkheads.get(dep.name)
        if found is None or found.limit != dep.concurrency.limit:
            found = self.bulkheads[dep.name] = _Bulkhead(dep.concurrency.limit)
        return found

    async def close(self) -> None:
        clients, self.clients = self.clients, {}
        for client in clients.values():
            await client.aclose()


_RUNTIME = Runtime()


def runtime() -> Runtime:
    """This process's runtime (in memory until the deps module starts with the kernel)."""
    return _RUNTIME


async def configure(*, redis: Any = None, registry: Any = None) -> Runtime:
    """Start afresh with `redis` (shared breakers) and metrics in `registry`."""
    global _RUNTIME  # noqa: PLW0603 - one runtime per process, replaced when the kernel starts
    await _RUNTIME.close()
    _RUNTIME = Runtime(redis=redis, metrics=_new_metrics(registry) if registry else None)
    return _RUNTIME


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _child_span() -> TraceContext:
    parent = current_trace()
    span = f"{random.getrandbits(64) or 1:016x}"
    if parent is None:
        trace = f"{random.getrandbits(128) or 1:032x}"
        return TraceContext(trace, span, None, True, trace)
    return TraceContext(parent.trace_id, span, parent.span_id, parent.sampled, parent.request_id)


class ResilientTransport(httpx.AsyncBaseTransport):
    """Timeouts, retries (idempotent requests only), breaker, bulkhead, spans and metrics
    around an inner transport. The response body is read within the call's deadline."""

    def __init__(self, name: str, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        dep = dependency(self.name)
        rt = runtime()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + dep.timeouts.total
        bulkhead = rt.bulkhead(dep)
        await bulkhead.acquire(dep.name, min(dep.concurrency.wait, dep.timeouts.total))
        if rt.metrics is not None:
            rt.metrics.in_flight.labels(dep.name).set(bulkhead.in_flight)
        try:
            return await self._attempts(dep, rt, request, deadline)
        finally:
            bulkhead.release()
            if rt.metrics is not None:
                rt.metrics.in_flight.labels(dep.name).set(bulkhead.in_flight)

    async def _attempts(
        self, dep: Dependency, rt: Runtime, request: httpx.Request, deadline: float
    ) -> httpx.Response:
        loop = asyncio.get_running_loop()
        breaker = rt.breaker(dep)
        retryable = request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers
        attempts = dep.retry.attempts if retryable else 1
        for attempt in range(1, attempts + 1):
            try:
                trial = await breaker.before_call()
            finally:
                if rt.metrics is not None:
                    rt.metrics.breaker.labels(dep.name).set(0 if breaker.state == "closed" else 1)
            remaining = deadline - loop.time()
            outcome, response, error = await self._attempt(dep, rt, request, remaining, trial)
            if outcome == "ok":
                assert response is not None
                await breaker.succeeded(trial)
                return response
            await breaker.failed(trial)
            # Full jitter; not a secret, so the module PRNG.
            ceiling = min(dep.retry.cap, dep.retry.base * 2 ** (attempt - 1))
            wait = random.uniform(0, ceiling)  # noqa: S311
            hinted = _retry_after(response) if response is not None else None
            if hinted is not None:
                wait = hinted
            remaining = deadline - loop.time()
            last = attempt == attempts or wait >= remaining
            if last:
                if response is not None:
                    return response  # the caller sees the upstream's own answer
                raise DependencyUnavailable(
                    dep.name, outcome, retry_after=hinted or dep.breaker.open_for
                ) from error
            if response is not None:
                await response.aclose()
            await rt.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, dep: Dependency, rt: Runtime, request: httpx.Request, remaining: float, trial: bool
    ) -> tuple[str, httpx.Response | None, Exception | None]:
        """One try: (outcome, response if one came, the error if not)."""
        if remaining <= 0:
            return "timeout", None, TimeoutError("the call's total time budget is spent")
        timeouts = dep.timeouts
        request.extensions["timeout"] = {
            "connect": min(timeouts.connect, remaining),
            "read": min(timeouts.read, remaining),
            "write": min(timeouts.read, remaining),
            "pool": min(timeouts.connect, remaining),
        }
        span = _child_span()
        request.headers["traceparent"] = span.traceparent
        token = set_trace(span)
        started = time.perf_counter()
        response: httpx.Response | None = None
        error: Exception | None = None
        try:
            async with asyncio.timeout(remaining):
                response = await self.inner.handle_async_request(request)
                await response.aread()
            if response.status_code in _RETRY_STATUSES:
                outcome = "status_429" if response.status_code == 429 else "status_5xx"
            else:
                outcome = "ok"
        except (TimeoutError, httpx.TimeoutException) as exc:
            outcome, error = "timeout", exc
        except httpx.TransportError as exc:
            outcome, error = "connect", exc
        except asyncio.CancelledError:
            rt.breaker(dep).abandoned(trial)
            raise
        finally:
            reset_trace(token)
        elapsed = time.perf_counter() - started
        if error is not None and response is not None:
            await response.aclose()
            response = None
        if rt.metrics is not None:
            rt.metrics.calls.labels(dep.name, outcome).inc()
            rt.metrics.latency.labels(dep.name).observe(elapsed)
        if outcome != "ok":
            _logger.info(
                "dependency call failed",
                dependency=dep.name,
                outcome=outcome,
                status=response.status_code if response is not None else None,
                ms=round(elapsed * 1000, 1),
                span_id=span.span_id,
                parent_span_id=span.parent_span_id,
            )
        return outcome, response, error


def http(name: str) -> httpx.AsyncClient:
    """An httpx.AsyncClient for the declared dependency `name` (kept per process; do not
    close it): relative URLs resolve against its base URL."""
    dep = dependency(name)
    name = dep.name  # one client and breaker per dependency, whichever spelling names it
    rt = runtime()
    client = rt.clients.get(name)
    if client is None or str(client.base_url).rstrip("/") != dep.base_url:
        client = rt.clients[name] = httpx.AsyncClient(
            base_url=dep.base_url,
            transport=ResilientTransport(name),
            timeout=httpx.Timeout(dep.timeouts.read, connect=dep.timeouts.connect),
        )
    return client
