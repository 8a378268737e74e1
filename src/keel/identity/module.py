"""The identity module's registration with the kernel."""

from __future__ import annotations

from keel.core.modules import KeelModule, MiddlewareSpec, Slot

__all__ = ["identity_module"]


def identity_module() -> KeelModule:
    """Identity's contributions: session middleware, CSRF, the auth API and `keel user`."""
    from keel.identity.api import auth_router, setup_page_router
    from keel.identity.cli import user_cli
    from keel.identity.middleware import CsrfMiddleware, IdentityMiddleware

    return KeelModule(
        name="identity",
        routers=(auth_router, lambda _keel: setup_page_router()),
        middleware=(
            MiddlewareSpec(
                Slot.IDENTITY,
                IdentityMiddleware,
                lambda k: {
                    "db": k.db,
                    "https": k.config.is_https,
                    "idle_minutes": k.config.session_idle_minutes,
                },
            ),
            MiddlewareSpec(Slot.CSRF, CsrfMiddleware),
        ),
        cli=user_cli,
        cli_name="user",
    )
