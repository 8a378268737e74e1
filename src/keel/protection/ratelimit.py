"""Rate limits: how many requests a caller may make per window before the answer is 429.

Policies are resolved per request by dictionary lookup and counted in fixed windows in a
`limits` storage (process memory, or Redis so every process shares one budget). The limiter
must never take the API down: a storage failure fails over to process memory, never closed.
See docs/rate-limits.md.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from limits import parse
from limits.aio.storage import Storage
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from keel.core.config import Config
from keel.core.context import response_record
from keel.core.errors import KeelError, problem_response
from keel.identity.principal import PRINCIPAL_KEY, Principal
from keel.observability.logging import get_logger
from keel.protection.ratestore import SWEEP_MIN, FixedWindowMemoryStorage, redis_storage

__all__ = [
    "RateLimitMetrics",
    "RateLimitMiddleware",
    "RateLimited",
    "RateLimiter",
    "RatePolicies",
    "RatePolicy",
    "client_key",
]

API_PATHS = "/api/"
NEVER_LIMITED = frozenset({"/healthz", "/readyz", "/metrics"})
LOGIN_ROUTES = frozenset(
    {
        ("POST", "/api/v1/auth/session"),
        ("POST", "/api/v1/auth/token"),
        ("POST", "/api/v1/auth/setup"),
    }
)
RETRY_AFTER_FAILURE = 5.0
"""Seconds the limiter counts in memory after a storage failure before trying it again."""

_logger = get_logger("keel.ratelimit")


class RateLimited(KeelError):
    """Too many requests; try again later."""

    status = 429
    slug = "rate-limited"
    title = "Too Many Requests"


# --- policies ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RatePolicy:
    """A budget: `amount` requests per `window` seconds, per principal or per client address."""

    name: str
    amount: int
    window: int
    by_address: bool = False
    """Count per client address even for a signed-in caller (sign-in routes)."""
    prefix: str = field(init=False, repr=False)
    limit_header: bytes = field(init=False, repr=False)
    policy_header: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # The counter key names the rate, so a changed configuration never inherits a window
        # of another length.
        object.__setattr__(self, "prefix", f"{self.name}|{self.amount}/{self.window}|")
        object.__setattr__(self, "limit_header", str(self.amount).encode())
        object.__setattr__(self, "policy_header", f"{self.amount};w={self.window}".encode())

    @classmethod
    def parse(cls, name: str, rate: str, *, by_address: bool = False) -> RatePolicy:
        """The policy for a rate string (`100/minute`); `unlimited` gives `UNLIMITED`."""
        if rate.strip().lower() == "unlimited":
            return UNLIMITED
        item = parse(rate)
        return cls(name, item.amount, item.get_expiry(), by_address)


UNLIMITED = RatePolicy("unlimited", 0, 0)
"""Marks a route or tenant exempted by configuration."""

_ByMethod = dict[str, RatePolicy]  # "" = any method


class RatePolicies:
    """Which policy a request falls under: login route > route override > tenant > default.

    Exact routes are one dictionary lookup; prefixes (`/api/v1/uploads/*`) are scanned,
    longest first, only when some are configured.
    """

    def __init__(
        self,
        *,
        default: RatePolicy,
        login: RatePolicy,
        routes: Mapping[str, RatePolicy] | None = None,
        tenants: Mapping[str, RatePolicy] | None = None,
    ) -> None:
        self.default = default
        self.tenants = dict(tenants or {})
        self._exact: dict[str, _ByMethod] = {}
        prefixes: dict[str, _ByMethod] = {}
        for method, path in LOGIN_ROUTES:
            self._exact.setdefault(path, {})[method] = login
        for key, policy in (routes or {}).items():
            method, _, path = key.rpartition(" ")
            if path.endswith("*"):
                prefixes.setdefault(path[:-1], {})[method] = policy
            else:
                self._exact.setdefault(path, {})[method] = policy
        self._prefixes = sorted(prefixes.items(), key=lambda item: len(item[0]), reverse=True)

    @classmethod
    def from_config(cls, config: Config) -> RatePolicies:
        """The policies `config` describes (its rate strings are already validated)."""
        routes = {}
        for key, rate in config.rate_limits.items():
            method, _, path = key.rpartition(" ")
            routes[key] = RatePolicy.parse(
                f"route {key}", rate, by_address=(method, path) in LOGIN_ROUTES
            )
        return cls(
            default=RatePolicy.parse("api", config.rate_limit_default),
            login=RatePolicy.parse("login", config.rate_limit_login, by_address=True),
            routes=routes,
            tenants={
                tenant: RatePolicy.parse(f"tenant {tenant}", rate)
                for tenant, rate in config.rate_limit_tenants.items()
            },
        )

    def resolve(self, method: str, path: str, tenant: str | None) -> RatePolicy | None:
        """The policy for a request, or None when it is not limited."""
        if path in NEVER_LIMITED:
            return None
        policy: RatePolicy | None = None
        by_method = self._exact.get(path)
        if by_method is not None:
            policy = by_method.get(method) or by_method.get("")
        if policy is None and self._prefixes:
            for prefix, by_method in self._prefixes:
                if path.startswith(prefix):
                    policy = by_method.get(method) or by_method.get("")
                    if policy is not None:
                        break
        if policy is None:
            if not path.startswith(API_PATHS):
                return None
            policy = self.default
            if tenant is not None and self.tenants:
                policy = self.tenants.get(tenant, policy)
        return None if policy is UNLIMITED else policy


def client_key(client: Sequence[Any] | None) -> str:
    """The counter key of an anonymous caller: its address, IPv6 by /64."""
    host = str(client[0]) if client else ""
    if not host:
        return "ip:unknown"
    if ":" not in host:
        return "ip:" + host
    return _ipv6_key(host)


@lru_cache(maxsize=4096)
def _ipv6_key(host: str) -> str:
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return "ip:" + host[:64]
    if address.ipv4_mapped is not None:
        return f"ip:{address.ipv4_mapped}"
    return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"


class _Resets(dict[str, float]):
    """When each window seen by this process ends, swept like the memory storage."""

    __slots__ = ("sweep_at",)

    def __init__(self) -> None:
        super().__init__()
        self.sweep_at = SWEEP_MIN

    def remember(self, key: str, reset_at: float, now: float) -> None:
        if len(self) >= self.sweep_at:
            for stale in [k for k, at in self.items() if at <= now]:
                del self[stale]
            self.sweep_at = max(SWEEP_MIN, 2 * len(self))
        self[key] = reset_at


# --- the limiter ---------------------------------------------------------------------------
class RateLimitMetrics(Collector):
    """Refusals per policy, storage failures, and whether counting has failed over to memory."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.rejected: dict[str, int] = {}
        self.storage_errors = 0
        self.fallback = False
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        """No up-front description: the families are built at collection."""
        return ()

    def collect(self) -> Iterable[Metric]:
        """The current values as Prometheus metric families."""
        rejected = CounterMetricFamily(
            "keel_rate_limit_rejected", "Requests refused with 429, per policy.", labels=["policy"]
        )
        for name, count in list(self.rejected.items()):
            rejected.add_metric([name], count)
        errors = CounterMetricFamily(
            "keel_rate_limit_storage_errors",
            "Rate-limit storage calls that failed (the request was counted in memory).",
            value=self.storage_errors,
        )
        fallback = GaugeMetricFamily(
            "keel_rate_limit_fallback",
            "1 while rate limits are counted in process memory because the shared storage "
            "is unreachable.",
            value=int(self.fallback),
        )
        return (rejected, errors, fallback)


class RateLimiter:
    """Counts requests against policies in fixed windows; fails over to memory, never closed."""

    def __init__(
        self,
        storage: Storage | None = None,
        *,
        metrics: RateLimitMetrics | None = None,
        clock: Callable[[], float] = time.time,
        retry_after_failure: float = RETRY_AFTER_FAILURE,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.fallback = FixedWindowMemoryStorage(clock=clock)
        self.storage = storage if storage is not None else self.fallback
        self.metrics = metrics or RateLimitMetrics()
        self.clock = clock
        self.retry_after_failure = retry_after_failure
        self._on_close = on_close
        self._resets = _Resets()
        self._fallback_resets = _Resets()
        self._down_until = 0.0  # monotonic; 0 while the storage is healthy

    @classmethod
    def from_config(
        cls, config: Config, *, registry: CollectorRegistry | None = None
    ) -> RateLimiter:
        """Memory counters, or Redis ones when `redis_url` is set."""
        metrics = RateLimitMetrics(registry)
        if not config.redis_url:
            return cls(metrics=metrics)
        storage, close = redis_storage(config.redis_url)
        return cls(storage, metrics=metrics, on_close=close)

    async def aclose(self) -> None:
        """Release the storage's connections."""
        if self._on_close is not None:
            await self._on_close()

    async def hit(self, policy: RatePolicy, who: str) -> tuple[bool, int, int]:
        """Count one request by `who`: (allowed, remaining, seconds until the window resets)."""
        key = policy.prefix + who
        probing = False
        if self._down_until:
            probing = time.monotonic() >= self._down_until
        try:
            if self._down_until and not probing:
                count, reset_at = await self._count(
                    self.fallback, self._fallback_resets, key, policy.window
                )
            else:
                count, reset_at = await self._count(self.storage, self._resets, key, policy.window)
                if probing:
                    self._recovered()
        except Exception as exc:  # noqa: BLE001 - the limiter must never take the API down
            self._failed(exc)
            count, reset_at = await self._count(
                self.fallback, self._fallback_resets, key, policy.window
            )
        allowed = count <= policy.amount
        if not allowed:
            self.metrics.rejected[policy.name] = self.metrics.rejected.get(policy.name, 0) + 1
        reset_in = max(0, math.ceil(reset_at - self.clock()))
        return allowed, max(0, policy.amount - count), reset_in

    async def _count(
        self, storage: Storage, resets: _Resets, key: str, window: int
    ) -> tuple[int, float]:
        count = await storage.incr(key, window)
        now = self.clock()
        if count == 1:  # this request opened the window
            reset_at = now + window
            resets.remember(key, reset_at, now)
            return count, reset_at
        reset_at = resets.get(key, 0.0)
        if reset_at <= now:  # another process opened it, or this one forgot
            reset_at = await storage.get_expiry(key)
            resets.remember(key, reset_at, now)
        return count, reset_at

    def _failed(self, exc: Exception) -> None:
        if self.storage is self.fallback:
            raise exc
        self.metrics.storage_errors += 1
        now = time.monotonic()
        if now >= self._down_until:  # one line per failed attempt, not per request
            _logger.warning(
                "rate-limit storage unreachable; counting in process memory",
                error=type(exc).__name__,
                retry_in_seconds=self.retry_after_failure,
            )
        self._down_until = now + self.retry_after_failure
        self.metrics.fallback = True

    def _recovered(self) -> None:
        self._down_until = 0.0
        self.metrics.fallback = False
        _logger.info("rate-limit storage reachable again")


# --- the middleware ------------------------------------------------------------------------
class RateLimitMiddleware:
    """Count each request against its policy; past the limit, answer 429 before the route.

    Runs after identity (it keys signed-in callers by principal) and adds the `RateLimit-*`
    headers to every response under a policy.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policies: RatePolicies | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        """`policies` None turns limiting off."""
        self.app = app
        self.policies = policies
        self.limiter = limiter if limiter is not None else RateLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.policies is None:
            await self.app(scope, receive, send)
            return
        principal = scope.get(PRINCIPAL_KEY)
        if not isinstance(principal, Principal):
            principal = None
        policy = self.policies.resolve(
            scope["method"], scope["path"], principal.tenant_id if principal else None
        )
        if policy is None:
            await self.app(scope, receive, send)
            return
        if principal is not None and not policy.by_address:
            who = principal.rate_key
        else:
            who = client_key(scope.get("client"))
        allowed, remaining, reset_in = await self.limiter.hit(policy, who)
        if not allowed:
            await self._refuse(policy, reset_in, scope, receive, send)
            return
        record, send = response_record(scope, send)
        record.headers += (
            (b"ratelimit-limit", policy.limit_header),
            (b"ratelimit-remaining", str(remaining).encode()),
            (b"ratelimit-reset", str(reset_in).encode()),
            (b"ratelimit-policy", policy.policy_header),
        )
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(
        policy: RatePolicy, reset_in: int, scope: Scope, receive: Receive, send: Send
    ) -> None:
        # Answered here rather than raised, so the metrics middleware records a 429.
        retry = max(1, reset_in)
        error = RateLimited(
            f"Too many requests: the limit is {policy.amount} per {policy.window} seconds; "
            f"try again in {retry} seconds.",
            headers={
                "Retry-After": str(retry),
                "RateLimit-Limit": str(policy.amount),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(retry),
                "RateLimit-Policy": policy.policy_header.decode(),
            },
        )
        await problem_response(error)(scope, receive, send)
