"""Effective values in memory, and the audited writes that change them.

A `SettingsStore` (one per kernel) loads every override into an immutable `Snapshot` and swaps
it in whole; the first running kernel's store also publishes its values onto the handles, so
`handle.value` is an attribute read. Writes take the session first, lock the key's row,
append a history entry, record an audit event and announce the `settings` topic, all in the
caller's transaction. Secret values are encrypted with the keyring and never returned.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.context import current_actor
from keel.audit.service import record
from keel.core.changes import announce
from keel.core.database import Database
from keel.core.errors import Conflict, NotFound, StartupError, ValidationFailed
from keel.core.ids import new_id
from keel.core.keyring import Keyring
from keel.core.principal import Principal, tenant_scope
from keel.observability.logging import get_logger
from keel.settings.models import GLOBAL, SettingChange, SettingOverride
from keel.settings.spec import MASK, Setting, Source, declared, dumps

__all__ = [
    "TOPIC",
    "Entry",
    "SettingsStore",
    "Snapshot",
    "bound_store",
    "history",
    "last_changes",
    "lookup",
    "rollback",
    "set_value",
    "unset_value",
    "write",
]

TOPIC = "settings"
_logger = get_logger("keel.settings")
T = TypeVar("T")


def lookup(key: str) -> Setting[Any]:
    """The declared setting `key`, or 404."""
    setting = declared().get(key)
    if setting is None:
        raise NotFound(f"There is no setting {key!r}.", hint="`keel settings list` shows them")
    return setting


def _context(key: str, scope: str) -> bytes:
    return f"keel_settings:{key}:{scope}".encode()


# --- the in-memory view ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One setting's state in a snapshot.

    `value`/`source` is what this process uses; `live` what the stored state says now (they
    differ only for a `restart_required` setting changed since start: then `pending`).
    """

    value: Any
    source: Source
    live: Any
    live_source: Source
    tenants: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        """A restart would change this process's value."""
        return self.live_source != self.source or self.live != self.value


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every declared setting's effective state, as loaded at one moment."""

    entries: Mapping[str, Entry]
    loaded_at: datetime

    def pending(self) -> list[str]:
        """Keys whose change waits for a restart of this process."""
        return sorted(key for key, entry in self.entries.items() if entry.pending)


@dataclass(slots=True)
class _Binding:
    store: SettingsStore | None = None


_binding = _Binding()  # the store whose values the handles show


def bound_store() -> SettingsStore | None:
    """The store whose values the handles show (the first running kernel's)."""
    return _binding.store


class SettingsStore:
    """One kernel's view of the settings, reloaded when the `settings` topic changes."""

    def __init__(self, db: Database, keyring: Callable[[], Awaitable[Keyring]]) -> None:
        self.db = db
        self._keyring = keyring
        self.snapshot = Snapshot(MappingProxyType({}), datetime.now(UTC))
        self._started: dict[str, tuple[Any, Source]] = {}
        self._reloading = asyncio.Lock()
        self.loads = 0

    def entry(self, key: str) -> Entry:
        """A declared setting's entry; its environment/default if not loaded yet."""
        entry = self.snapshot.entries.get(key)
        if entry is None:
            setting = lookup(key)
            value, source = _base(setting, strict=False)
            entry = Entry(value, source, value, source)
        return entry

    def get(self, key: str, tenant: str | None = None) -> Any:
        """The effective value of `key` (for `tenant`) in this store's snapshot."""
        entry = self.entry(key)
        if tenant is not None and tenant in entry.tenants:
            return entry.tenants[tenant]
        return entry.value

    async def reload(self) -> None:
        """Read every override, build a new snapshot and swap it in.

        Reloads run one at a time, so a slow reload of older rows cannot swap in after a
        newer one."""
        async with self._reloading:
            await self._reload()

    async def _reload(self) -> None:
        async with self.db.session() as session:
            # unscoped: the process holds every tenant's overrides.
            rows = list(await session.scalars(select(SettingOverride)))
        keyring: Keyring | None = None
        if any(r.ciphertext is not None for r in rows):
            try:
                keyring = await self._keyring()
            except Exception as exc:  # noqa: BLE001 - only the encrypted overrides are lost
                # Without a usable key the encrypted overrides are skipped (each logged);
                # every other setting still loads and propagates.
                _logger.warning("keyring unavailable; encrypted settings ignored", error=str(exc))
        by_key: dict[str, list[SettingOverride]] = {}
        for row in rows:
            by_key.setdefault(row.key, []).append(row)
        first = self.loads == 0
        entries: dict[str, Entry] = {}
        for key, setting in declared().items():
            value, source = _base(setting, strict=first)
            tenants: dict[str, Any] = {}
            for row in by_key.get(key, ()):
                stored = _stored_value(setting, row, keyring)
                if stored is _INVALID:
                    continue
                if row.scope == GLOBAL:
                    value, source = stored, "override"
                elif setting.per_tenant:
                    tenants[row.scope] = stored
            live, live_source = value, source
            if setting.restart_required:
                value, source = self._started.setdefault(key, (value, source))
            entries[key] = Entry(value, source, live, live_source, MappingProxyType(tenants))
        self.snapshot = Snapshot(MappingProxyType(entries), datetime.now(UTC))
        self.loads += 1
        if _binding.store is self:
            self._publish()

    def bind(self) -> bool:
        """Make this store's values the handles' values, unless another store has them."""
        if _binding.store is not None and _binding.store is not self:
            return False
        _binding.store = self
        self._publish()
        return True

    def unbind(self) -> None:
        """Give the handles back their environment/default values."""
        if _binding.store is not self:
            return
        _binding.store = None
        for setting in declared().values():
            value, source = _base(setting, strict=False)
            setting._publish(value, source, MappingProxyType({}))

    def _publish(self) -> None:
        # One synchronous pass: no other coroutine runs between two handles' updates.
        for key, entry in self.snapshot.entries.items():
            setting = declared().get(key)
            if setting is not None:
                setting._publish(entry.value, entry.source, entry.tenants)


_INVALID = object()


def _base(setting: Setting[Any], *, strict: bool) -> tuple[Any, Source]:
    """The environment's value, else the default. An invalid environment value stops startup
    (`strict`); later it is logged and ignored."""
    try:
        return setting.base(strict=strict)
    except ValueError as exc:
        raise StartupError(str(exc), hint=f"fix or unset {setting.env}") from None


def _stored_value(setting: Setting[Any], row: SettingOverride, keyring: Keyring | None) -> Any:
    try:
        if row.ciphertext is not None:
            if keyring is None:
                raise ValueError("no keyring to decrypt it")
            text = keyring.decrypt(row.ciphertext, context=_context(row.key, row.scope)).decode()
        else:
            text = row.value or "null"
        return setting.parse(json.loads(text))
    except Exception as exc:  # noqa: BLE001 - a stale or unreadable override must not stop reads
        _logger.warning(
            "stored setting ignored",
            key=setting.key,
            scope=row.scope or "global",
            error="unreadable" if setting.secret else str(exc),
        )
        return _INVALID


# --- writes ------------------------------------------------------------------------------------


async def write(db: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in a transaction, once more if a racing first write took the key's row."""
    for attempt in range(3):
        try:
            async with db.transaction() as session:
                return await work(session)
        except IntegrityError:
            if attempt == 2:
                raise Conflict("The setting changed concurrently; try again.") from None
    raise AssertionError("unreachable")


def _scope(setting: Setting[Any], tenant_id: str | None) -> str:
    if tenant_id is None:
        return GLOBAL
    if not 1 <= len(tenant_id) <= 36:
        # An empty tenant would be the global scope: refuse it rather than write that.
        raise ValidationFailed(
            "A tenant id is 1 to 36 characters.",
            errors=[{"loc": ["body", "tenant"], "msg": "1 to 36 characters"}],
        )
    if not setting.per_tenant:
        raise ValidationFailed(
            f"The setting {setting.key!r} has no tenant overrides.",
            errors=[{"loc": ["body", "tenant"], "msg": "not a per-tenant setting"}],
        )
    return tenant_id


async def _current(session: AsyncSession, key: str, scope: str) -> SettingOverride | None:
    # unscoped: callers pass the scope a principal may act in (checked by the API).
    query = select(SettingOverride).where(
        SettingOverride.key == key, SettingOverride.scope == scope
    )
    return await session.scalar(query.with_for_update())


async def _change(
    session: AsyncSession,
    setting: Setting[Any],
    *,
    scope: str,
    after: Any,
    after_present: bool,
    action: str,
    reason: str,
    keyring: Keyring | None,
    rolled_back_to: str | None = None,
) -> SettingChange:
    row = await _current(session, setting.key, scope)
    now = datetime.now(UTC)
    actor = current_actor()
    change = SettingChange(
        id=new_id(),
        key=setting.key,
        scope=scope,
        tenant_id=scope or None,
        action=action,
        at=now,
        actor_id=actor.id if actor else None,
        actor_label=(actor.label if actor else "")[:320],
        reason=reason,
        rolled_back_to=rolled_back_to,
    )
    before_data: Any = None
    if row is not None:
        change.before, change.before_ciphertext = row.value, row.ciphertext
        if row.ciphertext is not None and keyring is not None:
            context = _context(setting.key, scope)
            before_data = json.loads(keyring.decrypt(row.ciphertext, context=context))
        elif row.value is not None:
            before_data = json.loads(row.value)
    after_text = dumps(setting.dump(after)) if after_present else None
    after_cipher: bytes | None = None
    if after_text is not None and setting.secret:
        if keyring is None:
            raise ValueError("a keyring is needed to store a secret setting")
        after_cipher = keyring.encrypt(after_text.encode(), context=_context(setting.key, scope))
        change.after_ciphertext = after_cipher
    else:
        change.after = after_text
    session.add(change)
    if after_text is None:
        if row is not None:
            await session.delete(row)
    elif row is None:
        session.add(
            SettingOverride(
                id=new_id(),
                key=setting.key,
                scope=scope,
                tenant_id=scope or None,
                value=None if setting.secret else after_text,
                ciphertext=after_cipher,
                updated_at=now,
                change_id=change.id,
            )
        )
    else:
        row.value = None if setting.secret else after_text
        row.ciphertext = after_cipher
        row.updated_at = now
        row.change_id = change.id
    await session.flush()
    await record(
        session,
        f"setting.{action}",
        resource=("setting", setting.key),
        before={"value": before_data} if row is not None else None,
        after={"value": setting.dump(after)} if after_present else None,
        secret=("value",) if setting.secret else (),
        reason=reason,
        tenant_id=scope or None,
    )
    await announce(session, TOPIC)
    return change


def _parse(setting: Setting[Any], raw: Any) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ValidationFailed(
            str(exc), errors=[{"loc": ["body", "value"], "msg": str(exc)}]
        ) from None


def _reason(reason: str) -> str:
    reason = reason.strip()
    if not reason or len(reason) > 1000:
        raise ValidationFailed(
            "A reason (1 to 1000 characters) is required.",
            errors=[{"loc": ["body", "reason"], "msg": "required, at most 1000 characters"}],
        )
    return reason


async def set_value(
    session: AsyncSession,
    setting: Setting[Any],
    raw: Any,
    *,
    reason: str,
    tenant_id: str | None = None,
    keyring: Keyring | None = None,
) -> SettingChange:
    """Override `setting` (for `tenant_id`) with `raw`, validated; 422 and nothing written if
    it is not a valid value."""
    scope = _scope(setting, tenant_id)
    value = _parse(setting, raw)
    return await _change(
        session,
        setting,
        scope=scope,
        after=value,
        after_present=True,
        action="set",
        reason=_reason(reason),
        keyring=keyring,
    )


async def unset_value(
    session: AsyncSession,
    setting: Setting[Any],
    *,
    reason: str,
    tenant_id: str | None = None,
    keyring: Keyring | None = None,
) -> SettingChange | None:
    """Remove the override (for `tenant_id`); None if there was none (nothing written)."""
    scope = _scope(setting, tenant_id)
    reason = _reason(reason)
    if await _current(session, setting.key, scope) is None:
        return None
    return await _change(
        session,
        setting,
        scope=scope,
        after=None,
        after_present=False,
        action="unset",
        reason=reason,
        keyring=keyring,
    )


async def rollback(
    session: AsyncSession,
    setting: Setting[Any],
    change_id: str,
    *,
    reason: str,
    tenant_id: str | None = None,
    keyring: Keyring | None = None,
) -> SettingChange:
    """Make the override what change `change_id` left it (a new history entry)."""
    scope = _scope(setting, tenant_id)
    reason = _reason(reason)
    # unscoped: the scope (the caller's tenant or global) is part of the filter.
    target = await session.scalar(
        select(SettingChange).where(
            SettingChange.id == change_id,
            SettingChange.key == setting.key,
            SettingChange.scope == scope,
        )
    )
    if target is None:
        raise NotFound(f"No change {change_id!r} of {setting.key!r} here.")
    present = target.after is not None or target.after_ciphertext is not None
    value: Any = None
    if target.after_ciphertext is not None:
        if not setting.secret:
            # Restoring it would store a once-secret value in plain text.
            raise Conflict(
                f"That change holds an encrypted value, and {setting.key!r} is no longer "
                "secret; set a new value instead."
            )
        if keyring is None:
            raise ValueError("a keyring is needed to roll back a secret setting")
        context = _context(setting.key, scope)
        value = json.loads(keyring.decrypt(target.after_ciphertext, context=context))
    elif target.after is not None:
        value = json.loads(target.after)
    if present:
        try:
            value = setting.parse(value)
        except ValueError as exc:
            raise ValidationFailed(f"That change's value is no longer valid: {exc}") from None
    return await _change(
        session,
        setting,
        scope=scope,
        after=value,
        after_present=present,
        action="rollback",
        reason=reason,
        keyring=keyring,
        rolled_back_to=target.id,
    )


# --- reading history ---------------------------------------------------------------------------


def change_data(setting: Setting[Any], change: SettingChange) -> dict[str, Any]:
    """A history entry as JSON data (secret values masked)."""

    def shown(text: str | None, cipher: bytes | None) -> Any:
        if text is None and cipher is None:
            return None
        return MASK if setting.secret or text is None else json.loads(text)

    return {
        "id": change.id,
        "key": change.key,
        "tenant": change.tenant_id,
        "action": change.action,
        "before": shown(change.before, change.before_ciphertext),
        "after": shown(change.after, change.after_ciphertext),
        "had_override_before": change.before is not None or change.before_ciphertext is not None,
        "has_override_after": change.after is not None or change.after_ciphertext is not None,
        "at": change.at.isoformat(),
        "actor": change.actor_label or change.actor_id,
        "reason": change.reason,
        "rolled_back_to": change.rolled_back_to,
    }


async def history(
    session: AsyncSession,
    key: str,
    *,
    principal: Principal | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> list[SettingChange]:
    """The changes of `key` `principal` may see (a tenant's account: its tenant's), newest
    first, after `cursor`."""
    query = tenant_scope(select(SettingChange), SettingChange, principal)
    query = query.where(SettingChange.key == key)
    if cursor is not None:
        query = query.where(SettingChange.id < cursor)
    return list(await session.scalars(query.order_by(SettingChange.id.desc()).limit(limit)))


async def last_changes(session: AsyncSession, scope: str) -> dict[str, SettingChange]:
    """Each key's newest change in `scope`."""
    # unscoped: the caller picks a scope it may see.
    newest = (
        select(func.max(SettingChange.id))
        .where(SettingChange.scope == scope)
        .group_by(SettingChange.key)
    )
    rows = await session.scalars(select(SettingChange).where(SettingChange.id.in_(newest)))
    return {row.key: row for row in rows}
