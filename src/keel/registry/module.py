"""The registry module's registration: its API, per-kind permissions, CLI and the published
versions' cache, reloaded on change notices."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel.core.modules import KeelModule, PermissionSpec

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["registry_module", "registry_permissions"]

_ROLES = {
    "read": ("admin", "operator", "viewer"),
    "write": ("admin", "operator"),
    "publish": ("admin",),
    "archive": ("admin",),
}


def registry_permissions() -> tuple[PermissionSpec, ...]:
    """`registry:<kind>:read|write|publish|archive` for every kind registered now."""
    from keel.registry.kinds import registered_kinds

    return tuple(
        PermissionSpec(
            f"registry:{kind.name}:{verb}", f"{verb.capitalize()} {kind.name} assets", roles
        )
        for kind in registered_kinds()
        for verb, roles in _ROLES.items()
    )


async def _start(keel: Keel) -> None:
    from keel.core.changes import topic_version
    from keel.registry.cache import start_cache
    from keel.registry.service import TOPIC

    cache = start_cache(keel)
    keel.changes.watch(TOPIC, reload=cache.reload, version=lambda: topic_version(keel.db, TOPIC))


async def _stop(keel: Keel) -> None:
    from keel.registry.cache import stop_cache
    from keel.registry.service import TOPIC

    keel.changes.unwatch(TOPIC)
    stop_cache(keel)


def registry_module() -> KeelModule:
    """Registry's contributions: `/api/v1/registry`, `keel registry`, its permissions."""
    import keel.registry.builtin  # noqa: F401 - registers sql_query and json_schema
    from keel.registry.api import registry_router
    from keel.registry.cli import registry_cli

    return KeelModule(
        name="registry",
        routers=(registry_router,),
        on_startup=(_start,),
        on_shutdown=(_stop,),
        cli=registry_cli,
        permissions=registry_permissions(),
    )
