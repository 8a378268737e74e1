"""The circuit breaker: closed → open after N failures within a window → half-open trial
calls after `open_for` → closed on success, open again on failure.

Each process keeps the state in memory, so the open-breaker check costs no I/O. With Redis
(`KEEL_REDIS_URL`), failures and the open state are also written there and each process
re-reads the shared state at most every `SYNC_INTERVAL`, so a breaker opened by one process
opens in every process within that interval. Should Redis fail, the breaker carries on with
its in-memory state (logged once) rather than failing calls.

Purgatory was considered: its breaker counts consecutive failures (no time window), lets one
trial call through per half-open period and reads Redis on every call, which is not the
policy or the fail-fast cost required here.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from keel.deps.errors import DependencyUnavailable
from keel.deps.spec import Breaker
from keel.observability.logging import get_logger

__all__ = ["SYNC_INTERVAL", "CircuitBreaker"]

SYNC_INTERVAL = 0.25
"""Seconds a process trusts its copy of a shared (Redis) breaker state."""
_logger = get_logger("keel.deps")


class CircuitBreaker:
    """One dependency's breaker in this process (optionally shared through `redis`)."""

    def __init__(self, name: str, policy: Breaker, *, redis: Any = None) -> None:
        self.name = name
        self.policy = policy
        self.state = "closed"
        self.opened_at: float | None = None
        self._failures: deque[float] = deque()
        self._trials = 0
        self._redis = redis
        self._synced = 0.0
        self._redis_failed = False
        self._open_key = f"keel:deps:breaker:{name}:open"
        self._failures_key = f"keel:deps:breaker:{name}:failures"

    # --- the call path -------------------------------------------------------------------
    async def before_call(self) -> bool:
        """Admit a call or raise `DependencyUnavailable` (reason `breaker_open`). Returns
        whether the call is a half-open trial (pass it to `succeeded`/`failed`/`abandoned`)."""
        now = time.time()
        if self._redis is not None and now - self._synced >= SYNC_INTERVAL:
            await self._sync(now)
        if self.state == "open":
            assert self.opened_at is not None
            left = self.opened_at + self.policy.open_for - now
            if left > 0:
                raise DependencyUnavailable(self.name, "breaker_open", retry_after=left)
            self.state = "half_open"
            self._trials = 0
            _logger.info("breaker half-open", dependency=self.name)
        if self.state == "half_open":
            if self._trials >= self.policy.half_open_calls:
                raise DependencyUnavailable(
                    self.name, "breaker_open", retry_after=self.policy.open_for
                )
            self._trials += 1
            return True
        return False

    async def succeeded(self, trial: bool) -> None:
        """A call succeeded: a half-open breaker closes."""
        if self.state == "half_open" or (trial and self.state != "closed"):
            self._close()
            await self._shared_close()

    async def failed(self, trial: bool) -> None:
        """A call failed (timeout, connection error, 5xx, 429)."""
        now = time.time()
        if trial or self.state == "half_open":
            self._open(now)
            await self._shared_open(now)
            return
        self._failures.append(now)
        cutoff = now - self.policy.window
        while self._failures and self._failures[0] < cutoff:
            self._failures.popleft()
        count = len(self._failures)
        count = max(count, await self._shared_failure(now))
        if self.state == "closed" and count >= self.policy.failures:
            self._open(now)
            await self._shared_open(now)

    def abandoned(self, trial: bool) -> None:
        """A trial call ended without an answer either way (cancelled): free its place."""
        if trial and self._trials > 0:
            self._trials -= 1

    # --- state -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """State for operators and metrics: state, opened_at (epoch s), recent failures."""
        now = time.time()
        cutoff = now - self.policy.window
        retry_after = None
        if self.state == "open" and self.opened_at is not None:
            retry_after = max(0.0, self.opened_at + self.policy.open_for - now)
        return {
            "state": self.state,
            "opened_at": self.opened_at,
            "recent_failures": sum(1 for at in self._failures if at >= cutoff),
            "retry_after": retry_after,
            "shared": self._redis is not None and not self._redis_failed,
        }

    def _open(self, now: float) -> None:
        if self.state != "open":
            _logger.warning("breaker opened", dependency=self.name)
        self.state = "open"
        self.opened_at = now
        self._trials = 0

    def _close(self) -> None:
        if self.state != "closed":
            _logger.info("breaker closed", dependency=self.name)
        self.state = "closed"
        self.opened_at = None
        self._failures.clear()
        self._trials = 0

    # --- sharing through Redis -------------------------------------------------------------
    def _redis_error(self, exc: Exception) -> None:
        if not self._redis_failed:
            _logger.warning(
                "breaker state cannot reach Redis; using this process's state",
                dependency=self.name,
                error=str(exc),
            )
        self._redis_failed = True

    async def _sync(self, now: float) -> None:
        self._synced = now
        try:
            value = await self._redis.get(self._open_key)
        except Exception as exc:  # noqa: BLE001 - Redis down: keep the local state
            self._redis_error(exc)
            return
        self._redis_failed = False
        if value is not None:
            opened = float(value)
            if self.state == "closed" or (self.opened_at is not None and opened > self.opened_at):
                self.state = "open"
                self.opened_at = opened
                self._trials = 0
        elif self.state == "open":
            self._close()  # another process's trial call closed it

    async def _shared_open(self, now: float) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.set(self._open_key, repr(now), ex=3600)
        except Exception as exc:  # noqa: BLE001
            self._redis_error(exc)

    async def _shared_close(self) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.delete(self._open_key, self._failures_key)
        except Exception as exc:  # noqa: BLE001
            self._redis_error(exc)

    async def _shared_failure(self, now: float) -> int:
        """Record a failure for every process; returns the shared count within the window."""
        if self._redis is None:
            return 0
        window = self.policy.window
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(self._failures_key, {f"{now!r}:{id(self)}": now})
                pipe.zremrangebyscore(self._failures_key, "-inf", now - window)
                pipe.zcard(self._failures_key)
                pipe.expire(self._failures_key, int(window) + 1)
                results = await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self._redis_error(exc)
            return 0
        return int(results[2])
