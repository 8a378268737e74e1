"""`/api/v1/settings`: list, read, set, unset, history and rollback of runtime settings.

A deployment-level account sees and changes every setting (and any tenant's override); a
tenant's account sees only per-tenant settings, as its tenant has them, and changes only its
own tenant's overrides. Anything else answers 404, so a tenant learns nothing beyond its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from keel.core.errors import NotFound, problem_responses
from keel.core.principal import Principal, require
from keel.settings import service
from keel.settings.models import GLOBAL, SettingChange
from keel.settings.spec import Setting, declared, format_duration

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["setting_data", "settings_router"]

Reader = Annotated[Principal, Depends(require("settings:read"))]
Writer = Annotated[Principal, Depends(require("settings:write"))]
KeyPath = Annotated[str, Path(max_length=100)]


class NewValue(BaseModel):
    value: Any = Field(description="The new value, as JSON (durations as text like `30s`).")
    reason: str = Field(min_length=1, max_length=1000)
    tenant: str | None = Field(default=None, min_length=1, max_length=36)


class Rollback(BaseModel):
    change_id: str = Field(min_length=1, max_length=36)
    reason: str = Field(min_length=1, max_length=1000)
    tenant: str | None = Field(default=None, min_length=1, max_length=36)


def _bound(setting: Setting[Any], bound: Any) -> Any:
    return format_duration(bound) if setting.kind == "duration" and bound is not None else bound


def setting_data(
    store: service.SettingsStore,
    setting: Setting[Any],
    *,
    tenant: str | None = None,
    last: SettingChange | None = None,
) -> dict[str, Any]:
    """A setting as the API and CLI show it (secret values masked)."""
    entry = store.entry(setting.key)
    value, source = entry.value, entry.source
    if tenant is not None and tenant in entry.tenants:
        value, source = entry.tenants[tenant], "tenant"
    return {
        "key": setting.key,
        "type": setting.kind,
        "description": setting.description,
        "value": setting.shown(value),
        "source": source,
        "default": setting.shown(setting.default),
        "env": setting.env,
        "choices": list(setting.choices) if setting.choices else None,
        "min": _bound(setting, setting.ge),
        "max": _bound(setting, setting.le),
        "restart_required": setting.restart_required,
        "pending_restart": entry.pending,
        "pending_value": setting.shown(entry.live) if entry.pending else None,
        "secret": setting.secret,
        "per_tenant": setting.per_tenant,
        "tenant": tenant,
        "last_change": None if last is None else service.change_data(setting, last),
    }


def _visible(principal: Principal, key: str, tenant: str | None) -> tuple[Setting[Any], str | None]:
    """The setting and the tenant whose view is asked, or 404 for what the caller may not see."""
    setting = declared().get(key)
    if setting is None:
        raise NotFound(f"There is no setting {key!r}.")
    if principal.tenant_id is None:
        return setting, tenant
    if not setting.per_tenant or (tenant is not None and tenant != principal.tenant_id):
        raise NotFound(f"There is no setting {key!r}.")
    return setting, principal.tenant_id


def settings_router(keel: Keel) -> APIRouter:
    """Routes under /api/v1/settings."""
    from keel.settings.module import store_of

    router = APIRouter(prefix="/api/v1/settings", tags=["settings"])

    async def keyring_for(setting: Setting[Any]) -> Any:
        return await keel.keyring() if setting.secret else None

    async def state(setting: Setting[Any], tenant: str | None) -> dict[str, Any]:
        async with keel.db.session() as session:
            last = (await service.last_changes(session, tenant or GLOBAL)).get(setting.key)
        return setting_data(store_of(keel), setting, tenant=tenant, last=last)

    @router.get(
        "",
        summary="Every setting with its effective value, source, default and last change",
        responses=problem_responses(401, 403),
    )
    async def list_settings(principal: Reader) -> dict[str, Any]:
        tenant = principal.tenant_id
        store = store_of(keel)
        async with keel.db.session() as session:
            last = await service.last_changes(session, tenant or GLOBAL)
        items = [
            setting_data(store, setting, tenant=tenant, last=last.get(key))
            for key, setting in sorted(declared().items())
            if tenant is None or setting.per_tenant
        ]
        # Only what the caller may see: a tenant's account sees per-tenant settings, which are
        # never restart_required, so its list is always empty.
        visible = {item["key"] for item in items}
        pending = [key for key in store.snapshot.pending() if key in visible]
        return {"items": items, "pending_restart": pending}

    @router.get(
        "/{key}",
        summary="One setting (`tenant` for a tenant's view)",
        responses=problem_responses(401, 403, 404),
    )
    async def get_setting(
        key: KeyPath,
        principal: Reader,
        tenant: Annotated[str | None, Query(min_length=1, max_length=36)] = None,
    ) -> dict[str, Any]:
        setting, tenant = _visible(principal, key, tenant)
        return await state(setting, tenant)

    @router.put(
        "/{key}",
        summary="Override a setting (validated, audited, kept in its history)",
        responses=problem_responses(401, 403, 404, 409, 422),
    )
    async def put_setting(key: KeyPath, body: NewValue, principal: Writer) -> dict[str, Any]:
        setting, tenant = _visible(principal, key, body.tenant)
        keyring = await keyring_for(setting)
        await service.write(
            keel.db,
            lambda session: service.set_value(
                session, setting, body.value, reason=body.reason, tenant_id=tenant, keyring=keyring
            ),
        )
        await store_of(keel).reload()  # this process reads its own write at once
        return await state(setting, tenant)

    @router.delete(
        "/{key}",
        summary="Remove a setting's override (back to environment or default)",
        responses=problem_responses(401, 403, 404, 422),
    )
    async def delete_setting(
        key: KeyPath,
        principal: Writer,
        reason: Annotated[str, Query(max_length=1000)] = "",
        tenant: Annotated[str | None, Query(min_length=1, max_length=36)] = None,
    ) -> dict[str, Any]:
        setting, tenant = _visible(principal, key, tenant)
        keyring = await keyring_for(setting)
        await service.write(
            keel.db,
            lambda session: service.unset_value(
                session, setting, reason=reason, tenant_id=tenant, keyring=keyring
            ),
        )
        await store_of(keel).reload()
        return await state(setting, tenant)

    @router.get(
        "/{key}/history",
        summary="A setting's changes, newest first (keyset cursor)",
        responses=problem_responses(401, 403, 404),
    )
    async def setting_history(
        key: KeyPath,
        principal: Reader,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=36)] = None,
    ) -> dict[str, Any]:
        setting, _ = _visible(principal, key, None)
        async with keel.db.session() as session:
            rows = await service.history(
                session, setting.key, principal=principal, limit=limit, cursor=cursor
            )
        return {
            "items": [service.change_data(setting, row) for row in rows],
            "next_cursor": rows[-1].id if len(rows) == limit else None,
        }

    @router.post(
        "/{key}/rollback",
        summary="Set the value an earlier change left (a new history entry)",
        responses=problem_responses(401, 403, 404, 409, 422),
    )
    async def rollback_setting(key: KeyPath, body: Rollback, principal: Writer) -> dict[str, Any]:
        setting, tenant = _visible(principal, key, body.tenant)
        keyring = await keyring_for(setting)
        await service.write(
            keel.db,
            lambda session: service.rollback(
                session,
                setting,
                body.change_id,
                reason=body.reason,
                tenant_id=tenant,
                keyring=keyring,
            ),
        )
        await store_of(keel).reload()
        return await state(setting, tenant)

    return router
