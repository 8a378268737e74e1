"""The sealer loop every server runs: seal what writers left unsealed, sign checkpoints on
their own cadence, sleep. It must never compete with the writers it follows: it seals again
at once only after a full batch, and otherwise sleeps `SEAL_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from keel.audit.chain import CHECKPOINT_EVERY, CHECKPOINT_INTERVAL, SEAL_BATCH, checkpoint, seal
from keel.core.database import Database
from keel.core.keyring import Keyring
from keel.observability.logging import get_logger

__all__ = ["SEAL_INTERVAL", "Sealer"]

SEAL_INTERVAL = 0.25
_logger = get_logger("keel.audit")


class Sealer:
    """Seals `db`'s events and signs checkpoints with the key `keyring()` opens. Counts what
    it does (`calls`, `sealed`, `largest`, `busy` seconds) for benchmarks and metrics."""

    def __init__(
        self,
        db: Database,
        keyring: Callable[[], Awaitable[Keyring]],
        *,
        interval: float = SEAL_INTERVAL,
        batch: int = SEAL_BATCH,
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.interval = interval
        self.batch = batch
        self.calls = self.sealed = self.largest = 0
        self.busy = 0.0
        self._since_checkpoint = 0
        self._last_checkpoint = float("-inf")

    async def _seal(self) -> int:
        sealed = await seal(self.db, batch=self.batch)
        self.calls += 1
        self.sealed += sealed
        self.largest = max(self.largest, sealed)
        self._since_checkpoint += sealed
        return sealed

    async def step(self) -> int:
        """One pass: seal until a batch comes back short, then checkpoint if one is due
        (`CHECKPOINT_EVERY` events or `CHECKPOINT_INTERVAL` seconds since the last)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        total = 0
        try:
            while (sealed := await self._seal()) == self.batch:
                total += sealed
            total += sealed
            due = loop.time() - self._last_checkpoint >= CHECKPOINT_INTERVAL
            if self._since_checkpoint and (due or self._since_checkpoint >= CHECKPOINT_EVERY):
                await checkpoint(self.db, await self.keyring(), force=True)
                self._last_checkpoint, self._since_checkpoint = loop.time(), 0
        finally:
            self.busy += loop.time() - started
        return total

    async def drain(self) -> int:
        """Seal until nothing is left (a clean stop leaves nothing unsealed)."""
        total = 0
        while sealed := await self._seal():
            total += sealed
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until `stop` is set. Stopped by the event, never cancelled: a
        cancellation inside a write transaction could leave SQLite's write lock held."""
        failures = 0
        while not stop.is_set():
            try:
                await self.step()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep sealing through outages
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    _logger.warning("audit sealing failed", error=str(exc), failures=failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
