"""The resilient client against a flaky upstream: timeouts, retries and their jitter,
Retry-After, the breaker's transitions and fail-fast latency, the bulkhead, fallbacks."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from keel import deps
from keel.core.context import TraceContext, reset_trace, set_trace
from keel.deps.client import runtime
from tests.deps.upstream import Behaviour, Upstream


def _declare(upstream: Upstream, **options: object) -> None:
    options.setdefault("timeouts", deps.Timeouts(connect=1.0, read=1.0, total=3.0))
    options.setdefault("retry", deps.Retry(attempts=3, budget=3.0, base=0.01, cap=0.02))
    deps.declare("up", base_url=upstream.url, **options)  # type: ignore[arg-type]


async def test_a_healthy_call_passes_through_with_a_child_span(upstream: Upstream) -> None:
    _declare(upstream)
    parent = TraceContext("a" * 32, "b" * 16, None, True, "req")
    token = set_trace(parent)
    try:
        response = await deps.http("up").get("/things")
    finally:
        reset_trace(token)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    sent = upstream.hits[0][2]["traceparent"].split("-")
    assert sent[1] == "a" * 32 and sent[2] != "b" * 16, "a child span of the request's trace"


async def test_a_hanging_upstream_is_cut_at_the_total_budget(upstream: Upstream) -> None:
    _declare(upstream, timeouts=deps.Timeouts(connect=0.5, read=5.0, total=0.4))
    upstream.default = Behaviour(hang=True)
    started = time.perf_counter()
    with pytest.raises(deps.DependencyUnavailable) as caught:
        await deps.http("up").get("/slow")
    assert caught.value.reason == "timeout"
    assert time.perf_counter() - started < 1.5


async def test_idempotent_calls_are_retried_and_others_are_not(upstream: Upstream) -> None:
    _declare(upstream)
    upstream.then(Behaviour(status=503), Behaviour(status=502))
    assert (await deps.http("up").get("/x")).status_code == 200
    assert len(upstream.hits) == 3

    upstream.hits.clear()
    upstream.then(Behaviour(status=503))
    response = await deps.http("up").post("/charge", json={"amount": 1})
    assert response.status_code == 503, "a POST without an idempotency key is never repeated"
    assert len(upstream.hits) == 1

    upstream.hits.clear()
    upstream.then(Behaviour(status=503))
    keyed = await deps.http("up").post("/charge", json={}, headers={"Idempotency-Key": "k1"})
    assert keyed.status_code == 200 and len(upstream.hits) == 2


async def test_waits_use_full_jitter_within_their_bounds(upstream: Upstream) -> None:
    _declare(
        upstream,
        retry=deps.Retry(attempts=5, budget=10.0, base=0.1, cap=0.3),
        breaker=deps.Breaker(failures=1000),
    )
    upstream.default = Behaviour(status=500)
    waits: list[float] = []
    for _ in range(20):

        async def record(seconds: float) -> None:
            waits.append(seconds)

        runtime().sleep = record
        await deps.http("up").get("/x")
    assert len(waits) == 20 * 4
    for n, wait in enumerate(waits):
        assert 0 <= wait <= min(0.3, 0.1 * 2 ** (n % 4))
    assert len({round(w, 6) for w in waits}) > 40, "the waits are random"


async def test_retry_after_is_honoured_or_the_call_fails_at_once(upstream: Upstream) -> None:
    _declare(upstream, breaker=deps.Breaker(failures=50))
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    runtime().sleep = record
    upstream.then(Behaviour(status=429, retry_after="2"))
    assert (await deps.http("up").get("/x")).status_code == 200
    assert waits == [2.0]

    upstream.hits.clear()
    upstream.then(Behaviour(status=503, retry_after="60"))  # beyond the 3 s budget
    response = await deps.http("up").get("/x")
    assert response.status_code == 503 and len(upstream.hits) == 1


async def test_the_breaker_opens_fails_fast_half_opens_and_closes(upstream: Upstream) -> None:
    _declare(
        upstream,
        retry=deps.Retry(attempts=1),
        breaker=deps.Breaker(failures=3, window=10, open_for=0.3),
    )
    upstream.default = Behaviour(status=500)
    for _ in range(3):
        await deps.http("up").get("/x")
    hits = len(upstream.hits)
    started = time.perf_counter()
    with pytest.raises(deps.DependencyUnavailable) as caught:
        await deps.http("up").get("/x")
    assert time.perf_counter() - started < 0.05
    assert caught.value.reason == "breaker_open" and len(upstream.hits) == hits
    assert 0 < (caught.value.retry_after or 0) <= 0.3

    await asyncio.sleep(0.35)  # half-open: one trial; it fails, so the breaker opens again
    await deps.http("up").get("/x")
    with pytest.raises(deps.DependencyUnavailable):
        await deps.http("up").get("/x")

    await asyncio.sleep(0.35)
    upstream.default = Behaviour()
    assert (await deps.http("up").get("/x")).status_code == 200
    assert runtime().breakers["up"].state == "closed"
    assert (await deps.http("up").get("/x")).status_code == 200


async def test_failures_outside_the_window_do_not_open_the_breaker(upstream: Upstream) -> None:
    _declare(upstream, retry=deps.Retry(attempts=1), breaker=deps.Breaker(failures=2, window=0.2))
    upstream.default = Behaviour(status=500)
    await deps.http("up").get("/x")
    await asyncio.sleep(0.3)
    await deps.http("up").get("/x")
    assert runtime().breakers["up"].state == "closed"


async def test_connection_resets_count_as_failures(upstream: Upstream) -> None:
    deps.declare(
        "up", base_url=upstream.resetting_url, retry=deps.Retry(attempts=2, base=0.01, cap=0.01)
    )
    with pytest.raises(deps.DependencyUnavailable) as caught:
        await deps.http("up").get("/x")
    assert caught.value.reason == "connect"
    assert runtime().breakers["up"].snapshot()["recent_failures"] == 2


async def test_the_bulkhead_bounds_calls_in_flight(upstream: Upstream) -> None:
    _declare(upstream, concurrency=deps.Bulkhead(limit=2, wait=0.1))
    upstream.default = Behaviour(delay=0.4)
    client = deps.http("up")
    results = await asyncio.gather(*(client.get("/x") for _ in range(3)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, deps.DependencyUnavailable)]
    assert len(refused) == 1 and refused[0].reason == "saturated"
    assert sum(isinstance(r, httpx.Response) for r in results) == 2


async def test_a_fallback_or_the_last_good_value_answers_while_unavailable(
    upstream: Upstream,
) -> None:
    _declare(upstream, retry=deps.Retry(attempts=1), breaker=deps.Breaker(failures=1, open_for=30))

    async def fetch(client: httpx.AsyncClient) -> object:
        response = await client.get("/price")
        response.raise_for_status()
        return response.json()

    assert await deps.call("up", fetch, cache_key="price") == {"status": "ok"}
    upstream.default = Behaviour(status=500)
    with pytest.raises(httpx.HTTPStatusError):
        await deps.call("up", fetch, cache_key="other")  # the failing answer itself
    assert await deps.call("up", fetch, cache_key="price") == {"status": "ok"}
    assert await deps.call("up", fetch, fallback="degraded") == "degraded"
    assert await deps.call("up", fetch, fallback=lambda exc: exc.reason) == "breaker_open"
    with pytest.raises(deps.DependencyUnavailable):
        await deps.call("up", fetch)


def test_bad_declarations_are_refused() -> None:
    with pytest.raises(ValueError, match="base_url"):
        deps.declare("x", base_url="ftp://nope")
    with pytest.raises(ValueError, match="name"):
        deps.declare("Bad Name", base_url="http://127.0.0.1")
    with pytest.raises(ValueError, match=r"Timeouts\.total"):
        deps.Timeouts(total=0)
    with pytest.raises(ValueError, match=r"Retry\.attempts"):
        deps.Retry(attempts=0)
    with pytest.raises(ValueError, match=r"Bulkhead\.limit"):
        deps.Bulkhead(limit=0)
    with pytest.raises(LookupError, match="no dependency 'nope'"):
        deps.http("nope")


def test_unavailable_is_a_503_problem_with_retry_after() -> None:
    from keel.core.errors import error_response

    response = error_response(
        deps.DependencyUnavailable("up", "breaker_open", retry_after=4.2), {"type": "http"}
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"].startswith("application/problem+json")
    assert b"127.0.0.1" not in response.body


async def test_a_base_url_comes_from_the_environment(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_DEPS__ELSEWHERE__BASE_URL", upstream.url)
    deps.declare("elsewhere", base_url="http://127.0.0.1:9")
    assert (await deps.http("elsewhere").get("/x")).status_code == 200


async def test_a_breaker_opened_in_one_process_opens_in_another_through_redis(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two breakers on one Redis stand for two processes: failures add up across them, and
    once one opens, the other fails fast too; a success closes both."""
    import uuid

    import redis.asyncio as redis_asyncio

    from keel.deps import breaker as breaker_module
    from keel.deps.breaker import CircuitBreaker

    monkeypatch.setattr(breaker_module, "SYNC_INTERVAL", 0.0)
    name = f"shared-{uuid.uuid4().hex[:8]}"
    policy = deps.Breaker(failures=3, window=10, open_for=0.3)
    first_redis = redis_asyncio.from_url(redis_url)
    second_redis = redis_asyncio.from_url(redis_url)
    try:
        one = CircuitBreaker(name, policy, redis=first_redis)
        two = CircuitBreaker(name, policy, redis=second_redis)
        await one.failed(await one.before_call())
        await two.failed(await two.before_call())
        await one.failed(await one.before_call())  # the third failure, counted across both
        assert one.state == "open"
        with pytest.raises(deps.DependencyUnavailable):
            await two.before_call()
        await asyncio.sleep(0.35)
        trial = await two.before_call()
        await two.succeeded(trial)
        assert two.state == "closed"
        assert await one.before_call() is False and one.state == "closed"
    finally:
        await first_redis.aclose()
        await second_redis.aclose()


async def test_a_redis_outage_leaves_the_breaker_working_in_memory() -> None:
    import redis.asyncio as redis_asyncio

    from keel.deps.breaker import CircuitBreaker

    down = redis_asyncio.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    try:
        breaker = CircuitBreaker("lonely", deps.Breaker(failures=2), redis=down)
        for _ in range(2):
            await breaker.failed(await breaker.before_call())
        with pytest.raises(deps.DependencyUnavailable):
            await breaker.before_call()
        assert breaker.snapshot()["shared"] is False
    finally:
        await down.aclose()
