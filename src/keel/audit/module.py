"""The audit module's registration: its API, CLI, permissions and the sealer task."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from keel.audit.sealer import SEAL_INTERVAL, Sealer
from keel.core.modules import KeelModule, PermissionSpec

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["AUDIT_PERMISSIONS", "SEAL_INTERVAL", "audit_module"]

AUDIT_PERMISSIONS = (
    PermissionSpec("audit:read", "Read the audit trail (of my tenant)", ("admin", "operator")),
    PermissionSpec("audit:verify", "Verify the whole audit chain (deployment-level)", ("admin",)),
)


async def _start(keel: Keel) -> None:
    stop = asyncio.Event()
    sealer = Sealer(keel.db, keel.keyring)
    keel.state["audit.stop"] = stop
    keel.state["audit.sealer"] = asyncio.create_task(sealer.run(stop), name="keel-audit-sealer")


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
