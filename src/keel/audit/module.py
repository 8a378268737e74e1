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


async def _sealer(keel: Keel) -> None:
    from keel.audit.service import checkpoint, seal

    failures = 0
    last_checkpoint = 0.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            sealed = 0
            while (batch := await seal(keel.db)) > 0:
                sealed += batch
            if sealed or loop.time() - last_checkpoint > 60:
                await checkpoint(keel.db, await keel.keyring())
                last_checkpoint = loop.time()
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep sealing through outages
            failures += 1
            if failures in (1, 10) or failures % 100 == 0:
                _logger.warning("audit sealing failed", error=str(exc), failures=failures)
        await asyncio.sleep(SEAL_INTERVAL)


async def _start(keel: Keel) -> None:
    keel.state["audit.sealer"] = asyncio.create_task(_sealer(keel), name="keel-audit-sealer")


async def _stop(keel: Keel) -> None:
    from keel.audit.service import seal_all

    task = keel.state.pop("audit.sealer", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
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
