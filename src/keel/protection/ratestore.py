"""Where rate-limit counters live: process memory, or Redis shared by every process.

Both are `limits` async storages; the limiter uses their fixed-window primitives (`incr`,
`get_expiry`) only.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from limits.aio.storage import RedisStorage, Storage

__all__ = ["REDIS_KEY_PREFIX", "FixedWindowMemoryStorage", "redis_storage"]

REDIS_KEY_PREFIX = "keel:rl"
REDIS_TIMEOUT = 0.5
"""Seconds a Redis call may take before the request is counted in memory instead."""
SWEEP_MIN = 1024
"""Entries a table holds before its first sweep of expired windows."""


class _Window:
    __slots__ = ("count", "expires")

    def __init__(self, count: int, expires: float) -> None:
        self.count = count
        self.expires = expires


class FixedWindowMemoryStorage(Storage):
    """Fixed-window counters in process memory, as a `limits` async storage.

    `limits`' own MemoryStorage schedules a sweep over every key on every hit (about 1 ms per
    request with 10,000 active callers); this one drops expired windows only when the table
    has doubled since the last sweep, so a hit costs the same however many callers are active.
    It supports the fixed-window strategy only.
    """

    STORAGE_SCHEME = None

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        *,
        clock: Callable[[], float] = time.time,
        **options: float | str | bool,
    ) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._sweep_at = SWEEP_MIN

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        """Nothing here talks to a server; no error is a storage error."""
        return ()

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Add `amount` to the key's window, starting a window of `expiry` s if none is open."""
        now = self.clock()
        window = self._windows.get(key)
        if window is not None and window.expires > now:
            window.count += amount
            return window.count
        if len(self._windows) >= self._sweep_at:
            self._sweep(now)
        self._windows[key] = _Window(amount, now + expiry)
        return amount

    async def get(self, key: str) -> int:
        """The count in the key's open window (0 when none is open)."""
        window = self._windows.get(key)
        return window.count if window is not None and window.expires > self.clock() else 0

    async def get_expiry(self, key: str) -> float:
        """When the key's window ends (epoch seconds; now when none is open)."""
        window = self._windows.get(key)
        now = self.clock()
        return window.expires if window is not None and window.expires > now else now

    async def check(self) -> bool:
        """Always healthy."""
        return True

    async def reset(self) -> int | None:
        """Forget every window; returns how many there were."""
        count = len(self._windows)
        self._windows.clear()
        return count

    async def clear(self, key: str) -> None:
        """Forget one key's window."""
        self._windows.pop(key, None)

    def __len__(self) -> int:
        return len(self._windows)

    def _sweep(self, now: float) -> None:
        self._windows = {k: w for k, w in self._windows.items() if w.expires > now}
        self._sweep_at = max(SWEEP_MIN, 2 * len(self._windows))


def redis_storage(url: str) -> tuple[Storage, Callable[[], Awaitable[None]]]:
    """A `limits` Redis storage for `url`, and the coroutine function that closes it."""
    from keel.core.process import redis_asyncio

    # A pool of its own: short timeouts suit the request path, not the kernel's other uses.
    pool = redis_asyncio().ConnectionPool.from_url(
        url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
    )
    options: dict[str, Any] = {"connection_pool": pool}
    # The pool carries the address; the URI only selects limits' plain-Redis mode.
    storage = RedisStorage(
        "async+redis://", implementation="redispy", key_prefix=REDIS_KEY_PREFIX, **options
    )
    return storage, pool.disconnect
