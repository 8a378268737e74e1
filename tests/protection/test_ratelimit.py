"""Rate limits: budgets per principal or client address, overrides, headers, shared Redis
counters, and what happens when Redis is gone."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from keel import Config, KeelModule, create_app
from keel.core.modules import MiddlewareSpec, Slot
from keel.identity.principal import PRINCIPAL_KEY, Principal
from keel.protection.ratelimit import RateLimiter, RatePolicies, RatePolicy, client_key
from keel.protection.ratestore import FixedWindowMemoryStorage, redis_storage
from tests.conftest import REDIS_URL
from tests.test_serve import free_port, keel_env, running_serve

LOGIN = "/api/v1/auth/session"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the limiter keeps nothing in the database, so one dialect is enough."""
    return f"sqlite+aiosqlite:///{(tmp_path / 'keel.db').as_posix()}"


def _clear_redis_counters() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match="keel:rl:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def shared_redis(redis_url: str) -> Iterator[str]:
    """The test Redis (database 15) with no rate-limit counters before or after the test."""
    _clear_redis_counters()
    yield redis_url
    _clear_redis_counters()


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Configuration for counting in process memory, or in the test Redis."""
    if request.param == "memory":
        return {}
    return {"redis_url": request.getfixturevalue("shared_redis")}


class FakeIdentity:
    """Stands in for identity: `X-Test-User` / `X-Test-Tenant` headers become the principal."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            user = headers.get(b"x-test-user")
            if user:
                tenant = headers.get(b"x-test-tenant")
                scope[PRINCIPAL_KEY] = Principal(
                    user_id=user.decode(),
                    via="token",
                    tenant_id=tenant.decode() if tenant else None,
                )
        await self.app(scope, receive, send)


def _test_module() -> KeelModule:
    def routes(_keel: Any) -> APIRouter:
        router = APIRouter()

        @router.api_route("/api/v1/ping", methods=["GET", "POST"])
        async def ping() -> dict[str, bool]:
            return {"ok": True}

        @router.get("/api/v1/things/{thing}")
        async def thing(thing: str) -> dict[str, str]:
            return {"thing": thing}

        @router.get("/plain")
        async def plain() -> dict[str, bool]:
            return {"ok": True}

        return router

    return KeelModule(
        name="ratelimit-test",
        routers=(routes,),
        middleware=(MiddlewareSpec(Slot.IDENTITY + 50, FakeIdentity),),
    )


Clients = Callable[..., httpx.AsyncClient]


@contextlib.asynccontextmanager
async def serving(config: Config) -> AsyncIterator[Clients]:
    """Keel's app with the test routes, started; yields a factory of clients by address."""
    app = create_app(config, modules=[_test_module()], configure_logs=False)
    opened: list[httpx.AsyncClient] = []

    def client(
        ip: str = "127.0.0.1", user: str | None = None, tenant: str | None = None
    ) -> httpx.AsyncClient:
        headers = {}
        if user:
            headers["X-Test-User"] = user
        if tenant:
            headers["X-Test-Tenant"] = tenant
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(ip, 50000)),
            base_url="http://127.0.0.1:8000",
            headers=headers,
        )
        opened.append(http)
        return http

    async with LifespanManager(app):
        try:
            yield client
        finally:
            for http in opened:
                await http.aclose()


async def _spend(http: httpx.AsyncClient, times: int, path: str = "/api/v1/ping") -> None:
    for _ in range(times):
        response = await http.get(path)
        assert response.status_code == 200, response.text


# --- the boundary, on both storages ----------------------------------------------------------
async def test_default_api_limit_boundary(
    make_config: Callable[..., Config], storage: dict[str, Any]
) -> None:
    """Under the default 100/minute the 100th API request passes and the 101st is a 429
    problem with Retry-After and RateLimit-* headers, in memory and on Redis."""
    async with serving(make_config(**storage)) as client:
        http = client()
        for number in range(1, 101):
            response = await http.get("/api/v1/ping")
            assert response.status_code == 200, number
            assert response.headers["RateLimit-Limit"] == "100"
            assert response.headers["RateLimit-Remaining"] == str(100 - number)
            assert response.headers["RateLimit-Policy"] == "100;w=60"
            assert 0 < int(response.headers["RateLimit-Reset"]) <= 60
        refused = await http.get("/api/v1/ping")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["type"] == "urn:keel:problem:rate-limited"
    assert body["status"] == 429
    assert body["trace_id"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.headers["RateLimit-Limit"] == "100"
    assert refused.headers["RateLimit-Policy"] == "100;w=60"
    if storage:
        import redis

        with redis.Redis.from_url(storage["redis_url"]) as shared:
            assert shared.get("keel:rl:api|100/60|ip:127.0.0.1") == b"101"


async def test_refused_requests_do_not_reach_the_route(make_config: Callable[..., Config]) -> None:
    """A 429 is answered before routing: a route that would fail never runs."""
    async with serving(make_config(rate_limit_default="1/minute")) as client:
        http = client()
        assert (await http.get("/api/v1/nowhere")).status_code == 404
        refused = await http.get("/api/v1/nowhere")
    assert refused.status_code == 429


# --- who is counted ------------------------------------------------------------------------
async def test_signed_in_callers_are_counted_by_principal(
    make_config: Callable[..., Config],
) -> None:
    """A principal has its own budget wherever it calls from; others on its address do not
    share it, and anonymous callers on that address have the address's budget."""
    async with serving(make_config(rate_limit_default="3/minute")) as client:
        await _spend(client("10.0.0.1", user="u1"), 3)
        assert (await client("10.0.0.1", user="u1").get("/api/v1/ping")).status_code == 429
        assert (await client("10.9.9.9", user="u1").get("/api/v1/ping")).status_code == 429
        assert (await client("10.0.0.1", user="u2").get("/api/v1/ping")).status_code == 200
        await _spend(client("10.0.0.1"), 3)
        assert (await client("10.0.0.1").get("/api/v1/ping")).status_code == 429


async def test_anonymous_callers_are_counted_by_address(
    make_config: Callable[..., Config],
) -> None:
    """Anonymous budgets are per address; IPv6 addresses in one /64 share one, and an
    IPv4-mapped IPv6 address counts as its IPv4 address."""
    async with serving(make_config(rate_limit_default="2/minute")) as client:
        await _spend(client("192.0.2.1"), 2)
        assert (await client("192.0.2.1").get("/api/v1/ping")).status_code == 429
        assert (await client("::ffff:192.0.2.1").get("/api/v1/ping")).status_code == 429
        assert (await client("192.0.2.2").get("/api/v1/ping")).status_code == 200
        await _spend(client("2001:db8:1:2::1"), 1)
        await _spend(client("2001:db8:1:2:ffff::9"), 1)
        assert (await client("2001:db8:1:2::77").get("/api/v1/ping")).status_code == 429
        assert (await client("2001:db8:1:3::1").get("/api/v1/ping")).status_code == 200


async def test_login_is_limited_by_address_whoever_is_signed_in(
    make_config: Callable[..., Config],
) -> None:
    """The sign-in routes share one budget per client address, even for signed-in callers,
    and it is separate from the API budget."""
    config = make_config(rate_limit_login="3/minute", rate_limit_default="50/minute")
    async with serving(config) as client:
        statuses = [
            (await client("10.1.1.1", user="u1").post(LOGIN, json={})).status_code,
            (await client("10.1.1.1", user="u2").post("/api/v1/auth/token", json={})).status_code,
            (await client("10.1.1.1").post("/api/v1/auth/setup", json={})).status_code,
        ]
        assert 429 not in statuses
        refused = await client("10.1.1.1", user="u3").post(LOGIN, json={})
        assert refused.status_code == 429
        assert refused.headers["RateLimit-Policy"] == "3;w=60"
        assert (await client("10.1.1.2").post(LOGIN, json={})).status_code != 429
        assert (await client("10.1.1.1", user="u1").get("/api/v1/ping")).status_code == 200
        # Reading the session is not signing in: it has the API budget.
        session = await client("10.1.1.1").get(LOGIN)
        assert session.headers["RateLimit-Limit"] == "50"


# --- overrides -----------------------------------------------------------------------------
async def test_route_overrides(make_config: Callable[..., Config]) -> None:
    """A route override has its own budget; a method-less key covers every method; a trailing
    `*` covers a prefix; `unlimited` exempts a route; other routes keep the default."""
    config = make_config(
        rate_limit_default="5/minute",
        rate_limits={
            "POST /api/v1/ping": "2/minute",
            "/api/v1/things/*": "1/minute",
            "GET /api/v1/things/free": "unlimited",
            "/plain": "1/minute",
        },
    )
    async with serving(config) as client:
        http = client()
        for _ in range(2):
            response = await http.post("/api/v1/ping")
            assert response.status_code == 200
            assert response.headers["RateLimit-Policy"] == "2;w=60"
        assert (await http.post("/api/v1/ping")).status_code == 429
        ping = await http.get("/api/v1/ping")  # GET keeps the default, untouched by the POSTs
        assert ping.status_code == 200
        assert ping.headers["RateLimit-Remaining"] == "4"
        assert (await http.get("/api/v1/things/a")).status_code == 200
        assert (await http.get("/api/v1/things/b")).status_code == 429
        for _ in range(3):
            free = await http.get("/api/v1/things/free")
            assert free.status_code == 200
            assert "RateLimit-Limit" not in free.headers
        assert (await http.get("/plain")).status_code == 200
        assert (await http.get("/plain")).status_code == 429


async def test_tenant_overrides(make_config: Callable[..., Config]) -> None:
    """A tenant override sets the budget of each caller of that tenant; other tenants and
    callers without one keep the default; a route override still wins."""
    config = make_config(
        rate_limit_default="3/minute",
        rate_limit_tenants={"t1": "5/minute", "t2": "unlimited"},
        rate_limits={"GET /api/v1/things/*": "1/minute"},
    )
    async with serving(config) as client:
        await _spend(client(user="a", tenant="t1"), 5)
        assert (await client(user="a", tenant="t1").get("/api/v1/ping")).status_code == 429
        await _spend(client(user="b", tenant="t1"), 5)  # per caller, not a tenant-wide pool
        await _spend(client(user="c", tenant="t2"), 10)
        await _spend(client(user="d", tenant="t3"), 3)
        assert (await client(user="d", tenant="t3").get("/api/v1/ping")).status_code == 429
        await _spend(client(user="e", tenant="t2"), 1, "/api/v1/things/x")
        assert (await client(user="e", tenant="t2").get("/api/v1/things/y")).status_code == 429


# --- what is never limited -----------------------------------------------------------------
async def test_probes_and_pages_are_not_limited(make_config: Callable[..., Config]) -> None:
    """Health, readiness and metrics are never limited, nor non-API pages by default."""
    async with serving(make_config(rate_limit_default="1/minute")) as client:
        http = client()
        for _ in range(5):
            for path in ("/healthz", "/readyz", "/metrics", "/", "/plain"):
                response = await http.get(path)
                assert response.status_code == 200, path
                assert "RateLimit-Limit" not in response.headers


async def test_disabled(make_config: Callable[..., Config]) -> None:
    """`rate_limit_enabled = false` turns every limit off."""
    config = make_config(rate_limit_enabled=False, rate_limit_default="1/minute")
    async with serving(config) as client:
        http = client()
        for _ in range(3):
            response = await http.get("/api/v1/ping")
            assert response.status_code == 200
            assert "RateLimit-Limit" not in response.headers


async def test_refusals_are_counted_in_metrics(make_config: Callable[..., Config]) -> None:
    """A 429 is counted per policy, and the HTTP metrics record it as a 4xx."""
    async with serving(make_config(rate_limit_default="1/minute")) as client:
        http = client()
        await http.get("/api/v1/ping")
        await http.get("/api/v1/ping")
        metrics = (await http.get("/metrics")).text
    assert 'keel_rate_limit_rejected_total{policy="api"} 1.0' in metrics
    assert "keel_rate_limit_storage_errors_total 0.0" in metrics
    assert 'status_class="4xx"' in metrics
    assert 'status_class="5xx"' not in metrics


# --- bad configuration ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rate_limit_default", "100/mnute", "'100/mnute' is not a rate like 100/minute"),
        ("rate_limit_login", "0/minute", "is not a rate"),
        ("rate_limit_login", "1/second;10/minute", "is not a rate"),
        ("rate_limits", '{"POST /api/v1/x": "fast"}', "'fast' (for 'POST /api/v1/x')"),
        ("rate_limits", '{"POST api/v1/x": "1/minute"}', "is not a route"),
        ("rate_limits", '{"/healthz": "1/minute"}', "never rate limited"),
        ("rate_limits", "{not json", "must be a JSON object"),
        ("rate_limit_tenants", '{"t1": "lots"}', "(for tenant 't1')"),
    ],
)
def test_bad_configuration_fails_at_load(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, message: str
) -> None:
    """An unparseable rate or route key is refused when the configuration loads."""
    monkeypatch.setenv(f"KEEL_{field.upper()}", value)
    with pytest.raises(ValidationError) as caught:
        Config()
    assert message in str(caught.value)


def test_bad_rate_is_one_line_on_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """`keel` exits 2 with one line naming the setting and the bad value, no traceback."""
    from typer.testing import CliRunner

    from keel.cli import app

    monkeypatch.setenv("KEEL_RATE_LIMIT_DEFAULT", "100/mnute")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 2
    first = result.output.strip().splitlines()[0]
    assert first == (
        "keel: error: invalid configuration: rate_limit_default: '100/mnute' is not a rate "
        "like 100/minute, 10 per 5 seconds or unlimited"
    )
    assert "Traceback" not in result.output


def test_rate_tables_read_from_keel_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Route and tenant overrides are TOML tables; keys and rates are normalised."""
    toml = tmp_path / "keel.toml"
    toml.write_text(
        'rate_limit_default = "200/Minute"\n'
        "[rate_limits]\n"
        '"post /api/v1/things" = "10/minute"\n'
        '"/api/v1/uploads/*" = "Unlimited"\n'
        "[rate_limit_tenants]\n"
        't1 = "1000 per hour"\n'
    )
    monkeypatch.setenv("KEEL_CONFIG_FILE", str(toml))
    config = Config()
    assert config.rate_limit_default == "200/minute"
    assert config.rate_limits == {
        "POST /api/v1/things": "10/minute",
        "/api/v1/uploads/*": "unlimited",
    }
    assert config.rate_limit_tenants == {"t1": "1000 per hour"}


# --- the pieces ----------------------------------------------------------------------------
def test_policy_resolution_precedence() -> None:
    """Exact beats prefix, the longest prefix wins, a method beats any method; probes are
    never limited and non-API paths only when named."""
    config = Config(
        rate_limits={
            "/api/v1/a/*": "1/minute",
            "/api/v1/a/b/*": "2/minute",
            "GET /api/v1/a/b/*": "3/minute",
            "/api/v1/a/b/c": "4/minute",
            "/*": "unlimited",
        }
    )
    policies = RatePolicies.from_config(config)

    def amount(method: str, path: str) -> int | None:
        policy = policies.resolve(method, path, None)
        return None if policy is None else policy.amount

    assert amount("GET", "/api/v1/a/x") == 1
    assert amount("POST", "/api/v1/a/b/x") == 2
    assert amount("GET", "/api/v1/a/b/x") == 3
    assert amount("GET", "/api/v1/a/b/c") == 4
    assert amount("GET", "/api/v1/other") is None  # "/*" exempts everything else
    assert amount("GET", "/healthz") is None
    login = policies.resolve("POST", LOGIN, "t1")
    assert login is not None and login.by_address and login.amount == 10


def test_client_keys() -> None:
    """Addresses become counter keys: IPv4 as is, IPv6 by /64, mapped IPv6 as IPv4."""
    assert client_key(("203.0.113.7", 1234)) == "ip:203.0.113.7"
    assert client_key(["2001:db8::1", 1]) == "ip:2001:db8::/64"
    assert client_key(("2001:db8:0:0:ffff::1", 1)) == "ip:2001:db8::/64"
    assert client_key(("::ffff:203.0.113.7", 1)) == "ip:203.0.113.7"
    assert client_key(None) == "ip:unknown"
    assert client_key(("not:an:address", 1)) == "ip:not:an:address"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_window_resets_after_its_length() -> None:
    """A fixed window opens at the first request and the whole budget returns when it ends;
    Reset counts down to it."""
    clock = Clock()
    limiter = RateLimiter(FixedWindowMemoryStorage(clock=clock), clock=clock)
    policy = RatePolicy("api", 2, 60)
    assert await limiter.hit(policy, "user:a") == (True, 1, 60)
    clock.now += 45.5
    assert await limiter.hit(policy, "user:a") == (True, 0, 15)
    assert await limiter.hit(policy, "user:a") == (False, 0, 15)
    clock.now += 15
    assert await limiter.hit(policy, "user:a") == (True, 1, 60)


async def test_memory_storage_forgets_expired_windows() -> None:
    """Expired windows are swept as the table grows, so memory tracks active callers only."""
    clock = Clock()
    storage = FixedWindowMemoryStorage(clock=clock)
    for number in range(5000):
        await storage.incr(f"old:{number}", 10)
    clock.now += 11
    for number in range(5000):
        await storage.incr(f"new:{number}", 10)
    assert len(storage) < 7000
    assert await storage.get("old:1") == 0
    assert await storage.get("new:1") == 1
    assert await storage.get_expiry("new:1") == clock.now + 10


# --- Redis down ----------------------------------------------------------------------------
class FlakyStorage(FixedWindowMemoryStorage):
    """A shared storage that can be switched off."""

    down = False

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        if self.down:
            raise ConnectionError("storage is down")
        return await super().incr(key, expiry, amount)


async def test_unreachable_redis_fails_over_to_memory(caplog: pytest.LogCaptureFixture) -> None:
    """With Redis unreachable, requests are neither refused nor failed: they are counted in
    process memory (the limit still holds there), with a warning and a metric."""
    storage, close = redis_storage(f"redis://127.0.0.1:{free_port()}/0")
    limiter = RateLimiter(storage, on_close=close)
    policy = RatePolicy("api", 3, 60)
    results = [await limiter.hit(policy, "ip:192.0.2.9") for _ in range(4)]
    assert [allowed for allowed, _, _ in results] == [True, True, True, False]
    assert limiter.metrics.storage_errors == 1  # later requests skip Redis for a while
    assert limiter.metrics.fallback is True
    assert caplog.text.count("rate-limit storage unreachable") == 1
    await limiter.aclose()


async def test_storage_recovery_returns_to_shared_counting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After the retry delay the shared storage is tried again; once it answers, counting
    goes back to it and the fallback flag clears."""
    shared = FlakyStorage()
    limiter = RateLimiter(shared, retry_after_failure=0.05)
    policy = RatePolicy("api", 100, 60)
    shared.down = True
    assert (await limiter.hit(policy, "user:a"))[0]
    assert (await limiter.hit(policy, "user:a"))[0]
    assert limiter.metrics.storage_errors == 1
    await asyncio.sleep(0.06)
    assert (await limiter.hit(policy, "user:a"))[0]  # tried again, still down
    assert limiter.metrics.storage_errors == 2
    shared.down = False
    await asyncio.sleep(0.06)
    allowed, remaining, _ = await limiter.hit(policy, "user:a")
    assert allowed and remaining == 99  # counted in the shared storage again
    assert limiter.metrics.fallback is False
    assert "rate-limit storage reachable again" in caplog.text
    assert len(limiter.fallback) == 1


async def test_unreachable_redis_does_not_fail_requests(
    make_config: Callable[..., Config],
) -> None:
    """Through the whole app: Redis down, the API still answers and still limits."""
    config = make_config(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_default="2/minute"
    )
    async with serving(config) as client:
        http = client()
        await _spend(http, 2)
        assert (await http.get("/api/v1/ping")).status_code == 429
        metrics = (await http.get("/metrics")).text
    assert "keel_rate_limit_storage_errors_total 1.0" in metrics
    assert "keel_rate_limit_fallback 1.0" in metrics


# --- shared across processes ---------------------------------------------------------------
@pytest.mark.slow
def test_two_server_processes_share_one_budget(shared_redis: str, tmp_path: Path) -> None:
    """Two `keel serve` processes on one Redis enforce one budget between them."""
    env = keel_env(
        KEEL_REDIS_URL=shared_redis, KEEL_RATE_LIMIT_DEFAULT="5/minute", KEEL_SHUTDOWN_GRACE="2"
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        running_serve(tmp_path / "a", env) as (first, port_a),
        running_serve(tmp_path / "b", env) as (second, port_b),
    ):
        statuses, remaining = [], []
        for number in range(8):
            port = port_a if number % 2 == 0 else port_b
            # Any path under /api/ is counted, a missing one too: no route's code is involved.
            response = httpx.get(f"http://127.0.0.1:{port}/api/v1/no-such-thing", timeout=10)
            statuses.append(response.status_code)
            remaining.append(response.headers.get("RateLimit-Remaining"))
        for process in (first, second):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
    assert statuses == [404] * 5 + [429] * 3
    assert remaining == ["4", "3", "2", "1", "0", "0", "0", "0"]
