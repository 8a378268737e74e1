"""The settings module's registration: the store each kernel keeps, its reloads on change
notices, the API and CLI, permissions, and the readiness note on pending restarts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from keel.core.modules import KeelModule, PermissionSpec

if TYPE_CHECKING:
    from keel.app import Keel
    from keel.core.changes import ChangeWatcher
    from keel.core.config import Config
    from keel.core.database import Database
    from keel.settings.service import SettingsStore

__all__ = ["SETTINGS_PERMISSIONS", "settings_module", "start_settings", "store_of"]

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


async def _serve(store: SettingsStore, changes: ChangeWatcher) -> None:
    """Load `store` (strictly: an invalid environment value stops startup), make its values
    the handles' and reload it whenever the settings topic changes."""
    from keel.core.changes import topic_version
    from keel.settings.service import TOPIC

    await store.reload()  # values are current before the first request or job
    store.bind()
    changes.watch(TOPIC, reload=store.reload, version=lambda: topic_version(store.db, TOPIC))


async def _start(keel: Keel) -> None:
    await _serve(store_of(keel), keel.changes)


async def _stop(keel: Keel) -> None:
    from keel.settings.service import TOPIC

    keel.changes.unwatch(TOPIC)
    store = keel.state.get(_STATE_KEY)
    if store is not None:
        store.unbind()


async def start_settings(config: Config, db: Database) -> Callable[[], Awaitable[None]]:
    """Settings for a process that runs no kernel (`keel worker`): loaded strictly (an
    invalid environment value raises StartupError), bound to the handles and kept current
    through change notices (PostgreSQL `LISTEN`, Redis on the deployment's channel, the
    version poll) as a kernel does. Returns the function that stops all that."""
    from keel.core.changes import ChangeWatcher
    from keel.core.keyring import lazy_keyring
    from keel.core.process import connect_redis, ensure_instance
    from keel.settings.service import TOPIC, SettingsStore

    store = SettingsStore(db, lazy_keyring(config, db))
    changes = ChangeWatcher(db, poll_interval=config.changes_poll_interval)
    redis: Any = None

    async def stop() -> None:
        changes.unwatch(TOPIC)
        await changes.stop()
        store.unbind()
        if redis is not None:
            await redis.aclose()

    try:
        if config.redis_url:
            redis = connect_redis(config.redis_url)
        await changes.start(redis=redis, scope=await ensure_instance(db))
        await _serve(store, changes)
    except BaseException:
        await stop()
        raise
    return stop


def _pending(keel: Keel) -> Callable[[], Awaitable[str | None]]:
    async def check() -> str | None:
        # A count only: /readyz is public, setting names are for `settings:read` holders.
        pending = len(store_of(keel).snapshot.pending())
        if not pending:
            return None
        return f"{pending} setting{'s' if pending > 1 else ''} pending restart"

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
