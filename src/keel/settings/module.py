"""The settings module's registration: the store each kernel keeps, its reloads on change
notices, the API and CLI, permissions, and the readiness note on pending restarts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from keel.core.modules import KeelModule, PermissionSpec

if TYPE_CHECKING:
    from keel.app import Keel
    from keel.settings.service import SettingsStore

__all__ = ["SETTINGS_PERMISSIONS", "settings_module", "store_of"]

SETTINGS_PERMISSIONS = (
    PermissionSpec(
        "settings:read", "See runtime settings and their history", ("admin", "operator")
    ),
    PermissionSpec("settings:write", "Change, unset and roll back runtime settings", ("admin",)),
)
_STATE_KEY = "settings.store"


def store_of(keel: Keel) -> SettingsStore:
    """The kernel's settings store (created on first use)."""
    from keel.settings.service import SettingsStore

    store = keel.state.get(_STATE_KEY)
    if store is None:
        store = keel.state[_STATE_KEY] = SettingsStore(keel.db, keel.keyring)
    return store


async def _start(keel: Keel) -> None:
    from keel.settings.service import TOPIC

    store = store_of(keel)
    await store.reload()  # values are current before the first request
    store.bind()
    keel.changes.watch(TOPIC, reload=store.reload, version=store.version)


async def _stop(keel: Keel) -> None:
    from keel.settings.service import TOPIC

    keel.changes.unwatch(TOPIC)
    store = keel.state.get(_STATE_KEY)
    if store is not None:
        store.unbind()


def _pending(keel: Keel) -> Callable[[], Awaitable[str | None]]:
    async def check() -> str | None:
        pending = store_of(keel).snapshot.pending()
        return f"pending restart: {', '.join(pending)}" if pending else None

    return check


def settings_module() -> KeelModule:
    """Settings' contributions."""
    from keel.settings.api import settings_router
    from keel.settings.cli import settings_cli

    return KeelModule(
        name="settings",
        routers=(settings_router,),
        readiness={"settings": _pending},
        on_startup=(_start,),
        on_shutdown=(_stop,),
        permissions=SETTINGS_PERMISSIONS,
        cli=settings_cli,
    )
