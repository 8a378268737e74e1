"""The audit module's registration: its API, CLI, permissions and the sealer task."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from keel.core.modules import KeelModule, PermissionSpec
from keel.observability.logging import get_logger

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["AUDIT_PERMISSIONS", "SEAL_INTERVAL", "audit_module"]

SEAL_INTERVAL = 0.25
AUDIT_PERMISSIONS = (
    PermissionSpec("audit:read", "Read the audit trail (of my tenant)", ("admin", "operator")),
    PermissionSpec("audit:verify", "Verify the whole audit chain (deployment-level)", ("admin",)),
)
_logger = get_logger("keel.audit")


async def _sealer(keel: Keel, stop: asyncio.Event) -> None:
    """Seal and checkpoint until `stop` is set. Stopped by the event, never cancelled: a
    cancellation inside a write transaction could leave SQLite's write lock held."""
    from keel.audit.service import (
        CHECKPOINT_EVERY,
        CHECKPOINT_INTERVAL,
        SEAL_BATCH,
        checkpoint,
        seal,
    )

    failures = 0
    since_checkpoint = 0
    last_checkpoint = float("-inf")
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            # Seal again at once only after a full batch: under a steady trickle of writes the
            # sealer otherwise never sleeps and competes with the writers it follows.
            while (batch := await seal(keel.db)) == SEAL_BATCH:
                since_checkpoint += batch
            since_checkpoint += batch
            due = loop.time() - last_checkpoint >= CHECKPOINT_INTERVAL
            if since_checkpoint and (due or since_checkpoint >= CHECKPOINT_EVERY):
                await checkpoint(keel.db, await keel.keyring(), force=True)
                last_checkpoint, since_checkpoint = loop.time(), 0
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep sealing through outages
            failures += 1
            if failures in (1, 10) or failures % 100 == 0:
                _logger.warning("audit sealing failed", error=str(exc), failures=failures)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=SEAL_INTERVAL)


async def _start(keel: Keel) -> None:
    stop = asyncio.Event()
    keel.state["audit.stop"] = stop
    keel.state["audit.sealer"] = asyncio.create_task(_sealer(keel, stop), name="keel-audit-sealer")


async def _stop(keel: Keel) -> None:
    from keel.audit.service import seal_all

    task = keel.state.pop("audit.sealer", None)
    stop = keel.state.pop("audit.stop", None)
    if task is not None and stop is not None:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=10)
        except Exception:  # noqa: BLE001 - a stuck sealer must not block shutdown
            task.cancel()
    with contextlib.suppress(Exception):
        await seal_all(keel.db)  # leave nothing unsealed behind a clean stop


def audit_module() -> KeelModule:
    """Audit's contributions: `/api/v1/audit`, `keel audit`, permissions, the sealer."""
    from keel.audit.api import audit_router
    from keel.audit.cli import audit_cli

    return KeelModule(
        name="audit",
        routers=(audit_router,),
        on_startup=(_start,),
        on_shutdown=(_stop,),
        permissions=AUDIT_PERMISSIONS,
        cli=audit_cli,
    )
