"""The revocation set: what no process may accept any more, held in memory in every process.

Rows in `keel_revocations` are the truth. Each process loads the live ones at start, then
polls for rows newer than the last it saw every `interval` seconds (an indexed `id > last`
query, never on the request path). With Redis, a writer also publishes a nudge after its
commit, so other processes poll at once instead of within the second.

Kinds: `jti` (one access token), `family` (every access token of a refresh family), `apikey`
(one API key), `user` (a user's rights changed: drop what is cached about it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.database import Database
from keel.identity.models import Revocation
from keel.observability.logging import get_logger

__all__ = ["CHANNEL", "RevocationSet"]

CHANNEL = "keel:revocations"
KINDS = frozenset({"jti", "family", "apikey", "user"})
OVERLAP = timedelta(seconds=60)
"""How far back each poll re-reads, for rows committed out of id order."""
_logger = get_logger("keel.identity")


class RevocationSet:
    """In-memory view of `keel_revocations`, kept fresh by polling (and Redis nudges)."""

    def __init__(self, db: Database, *, redis: Any = None, interval: float = 1.0) -> None:
        self.db = db
        self.redis = redis
        self.interval = interval
        self.jti: dict[str, float] = {}
        self.family: dict[str, float] = {}
        self.apikey: dict[str, float] = {}
        self._last_id = 0
        self._seen: dict[int, float] = {}
        self._listeners: list[Callable[[str, str], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def on_revoke(self, listener: Callable[[str, str], None]) -> None:
        """Call `listener(kind, value)` for every revocation this process learns of."""
        self._listeners.append(listener)

    # --- reads (hot path) --------------------------------------------------------------------
    def token_revoked(self, jti: str, family: str | None) -> bool:
        """Whether an access token is revoked by its id or its refresh family."""
        return jti in self.jti or (family is not None and family in self.family)

    # --- writes ------------------------------------------------------------------------------
    @staticmethod
    def add(session: AsyncSession, kind: str, value: str, *, expires_at: datetime) -> None:
        """Record a revocation in the caller's transaction; call `publish()` after commit."""
        if kind not in KINDS:
            raise ValueError(f"unknown revocation kind {kind!r}")
        session.add(
            Revocation(kind=kind, value=value, created_at=datetime.now(UTC), expires_at=expires_at)
        )

    async def publish(self) -> None:
        """After committing revocations: apply them here now, and nudge other processes."""
        await self.refresh()
        if self.redis is not None:
            try:
                await self.redis.publish(CHANNEL, "1")
            except Exception as exc:  # noqa: BLE001 - polling still propagates it within 1 s
                _logger.warning("revocation nudge not published", error=str(exc))

    # --- sync --------------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Read revocations this process has not applied yet.

        Ids are assigned at insert, not at commit, so on PostgreSQL a row can become visible
        after a higher id was already seen; rows created in the last `OVERLAP` are therefore
        read again on every poll (applying one twice is harmless).
        """
        async with self._lock:
            now = datetime.now(UTC)
            async with self.db.session() as session:
                rows = (
                    await session.execute(
                        select(
                            Revocation.id, Revocation.kind, Revocation.value, Revocation.expires_at
                        )
                        .where(
                            or_(
                                Revocation.id > self._last_id, Revocation.created_at > now - OVERLAP
                            ),
                            Revocation.expires_at > now,
                        )
                        .order_by(Revocation.id)
                    )
                ).all()
            clock = now.timestamp()
            for row_id, kind, value, expires_at in rows:
                if row_id not in self._seen:
                    self._seen[row_id] = clock
                    self._apply(kind, value, expires_at.timestamp())
                self._last_id = max(self._last_id, row_id)
            horizon = clock - 2 * OVERLAP.total_seconds()
            for row_id in [row_id for row_id, at in self._seen.items() if at < horizon]:
                del self._seen[row_id]
            self._forget_expired(clock)

    def _table(self, kind: str) -> dict[str, float]:
        return {"jti": self.jti, "family": self.family, "apikey": self.apikey}.get(kind, {})

    def _apply(self, kind: str, value: str, expires: float) -> None:
        if kind in ("jti", "family", "apikey"):
            self._table(kind)[value] = expires
        for listener in self._listeners:
            listener(kind, value)

    def _forget_expired(self, now: float) -> None:
        for table in (self.jti, self.family, self.apikey):
            for value in [value for value, expires in table.items() if expires <= now]:
                del table[value]

    async def prune(self) -> int:
        """Delete rows whose revocation no longer matters (what they cover has expired)."""
        async with self.db.transaction() as session:
            result = await session.execute(
                delete(Revocation).where(Revocation.expires_at <= datetime.now(UTC))
            )
        return int(getattr(result, "rowcount", 0) or 0)

    # --- background --------------------------------------------------------------------------
    async def start(self) -> None:
        """Load, then keep polling (and listening to Redis) until `stop()`."""
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._poll(), name="keel-revocations-poll"))
        if self.redis is not None:
            self._tasks.append(asyncio.create_task(self._listen(), name="keel-revocations-redis"))

    async def stop(self) -> None:
        """Stop the background tasks."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def _poll(self) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            self._wake.clear()
            try:
                await self.refresh()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - keep polling through outages
                failures += 1
                if failures in (1, 10) or failures % 60 == 0:
                    _logger.warning("revocation poll failed", error=str(exc), failures=failures)

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - polling covers the gap
                _logger.warning("revocation subscription lost", error=str(exc))
                await asyncio.sleep(1.0)
