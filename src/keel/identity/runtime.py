"""What identity keeps in memory per kernel: the permission catalog, signing keys, the token
verifier, the API-key cache and the revocation set, with their background refresh."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete

from keel.identity.access import Catalog, permission_catalog_of
from keel.identity.apikeys import ApiKeyResolver
from keel.identity.revocation import RevocationSet
from keel.identity.throttle import LoginAttempt
from keel.identity.tokens import SigningKeys, TokenVerifier
from keel.observability.logging import get_logger

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["ATTEMPT_RETENTION", "IdentityRuntime", "identity_runtime", "prune_attempts"]

ATTEMPT_RETENTION = timedelta(days=90)
KEY_REFRESH_SECONDS = 10.0
HOUSEKEEPING_SECONDS = 86_400.0
_logger = get_logger("keel.identity")


class IdentityRuntime:
    """Identity's per-kernel state (one per `Keel`)."""

    def __init__(self, keel: Keel) -> None:
        config = keel.config
        self.keel = keel
        self.catalog: Catalog = permission_catalog_of(keel.modules)
        self.revocations = RevocationSet(keel.db)
        self.keys = SigningKeys(
            keel.db,
            keyring=keel.keyring,
            window=timedelta(
                minutes=config.access_token_minutes, seconds=config.jwt_leeway_seconds
            ),
        )
        self.verifier = TokenVerifier(
            self.keys,
            self.revocations,
            issuer=config.token_issuer,
            audience=config.jwt_audience,
            leeway=config.jwt_leeway_seconds,
        )
        self.api_keys = ApiKeyResolver(keel.db, self.catalog, self.revocations)
        self._key_refresh: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load keys and revocations; start following revocations; prune old rows."""
        self.revocations.redis = self.keel.redis
        await self.keys.load()
        await self.revocations.start()
        self._key_refresh = asyncio.create_task(self._refresh_keys(), name="keel-signing-keys")
        try:
            await self.housekeeping()
        except Exception as exc:  # noqa: BLE001 - housekeeping must not stop a start
            _logger.warning("identity housekeeping failed", error=str(exc))

    async def stop(self) -> None:
        """Stop the background tasks."""
        if self._key_refresh is not None:
            self._key_refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._key_refresh
            self._key_refresh = None
        await self.revocations.stop()

    async def _refresh_keys(self) -> None:
        # A rotation made elsewhere (`keel keys rotate`, another process) is picked up here,
        # well inside the window in which the retired key is still accepted everywhere; and
        # once a day the housekeeping runs again (a server may run for months).
        loop = asyncio.get_running_loop()
        last_housekeeping = loop.time()
        while True:
            await asyncio.sleep(KEY_REFRESH_SECONDS)
            try:
                await self.keys.load()
                if loop.time() - last_housekeeping >= HOUSEKEEPING_SECONDS:
                    last_housekeeping = loop.time()
                    await self.housekeeping()
            except Exception as exc:  # noqa: BLE001 - keep the keys we have; retry later
                _logger.warning("identity background work failed", error=str(exc))

    async def housekeeping(self) -> None:
        """Drop expired revocations and login attempts older than `ATTEMPT_RETENTION`."""
        await self.revocations.prune()
        await prune_attempts(self.keel, older_than=ATTEMPT_RETENTION)


def identity_runtime(keel: Keel) -> IdentityRuntime:
    """The kernel's identity runtime, created on first use."""
    runtime = keel.state.get("identity")
    if runtime is None:
        runtime = keel.state["identity"] = IdentityRuntime(keel)
    assert isinstance(runtime, IdentityRuntime)
    return runtime


async def prune_attempts(keel: Keel, *, older_than: timedelta) -> int:
    """Delete recorded login attempts older than `older_than`. Returns how many."""
    async with keel.db.transaction() as session:
        result = await session.execute(
            delete(LoginAttempt).where(LoginAttempt.at < datetime.now(UTC) - older_than)
        )
    return int(getattr(result, "rowcount", 0) or 0)
