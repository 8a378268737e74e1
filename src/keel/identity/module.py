"""The identity module's registration with the kernel."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel.core.modules import KeelModule, MiddlewareSpec, Slot

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["identity_module"]


async def _start(keel: Keel) -> None:
    from keel.identity.runtime import identity_runtime

    await identity_runtime(keel).start()


async def _stop(keel: Keel) -> None:
    from keel.identity.runtime import identity_runtime

    await identity_runtime(keel).stop()


def identity_module() -> KeelModule:
    """Identity's contributions: principal resolution, CSRF, the auth and admin APIs, JWKS,
    its permissions, and `keel user` / `keel tenant`."""
    from keel.identity.access import IDENTITY_PERMISSIONS
    from keel.identity.api import (
        admin_router,
        auth_router,
        jwks_router,
        setup_page_router,
    )
    from keel.identity.cli import tenant_cli, user_cli
    from keel.identity.middleware import CsrfMiddleware, IdentityMiddleware
    from keel.identity.runtime import identity_runtime

    return KeelModule(
        name="identity",
        routers=(auth_router, admin_router, jwks_router, lambda _keel: setup_page_router()),
        middleware=(
            MiddlewareSpec(
                Slot.IDENTITY,
                IdentityMiddleware,
                lambda k: {
                    "runtime": identity_runtime(k),
                    "db": k.db,
                    "https": k.config.is_https,
                    "idle_minutes": k.config.session_idle_minutes,
                },
            ),
            MiddlewareSpec(Slot.CSRF, CsrfMiddleware),
        ),
        on_startup=(_start,),
        on_shutdown=(_stop,),
        permissions=IDENTITY_PERMISSIONS,
        cli=user_cli,
        cli_name="user",
        more_cli=(("tenant", tenant_cli),),
    )
