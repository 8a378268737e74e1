"""`/api/v1/registry/{kind}/…`: assets, their versions and transitions, guarded per kind
(`registry:<kind>:read|write|publish|archive`) and confined to the caller's tenant."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.errors import (
    Forbidden,
    KeelError,
    NotFound,
    Unauthenticated,
    problem_responses,
)
from keel.core.guards import register_guard
from keel.core.principal import Principal, current_principal, require_user, tenant_scope
from keel.identity.models import Tenant
from keel.registry import service
from keel.registry.diff import structural_diff, text_diffs
from keel.registry.kinds import get_kind, registered_kinds
from keel.registry.models import Asset, Transition, Version
from keel.registry.schemas import (
    MAX_VERSION,
    NAME_PATTERN,
    ArchiveIn,
    AssetIn,
    AssetPage,
    DraftIn,
    PublishIn,
    RollbackIn,
)

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = [
    "PreconditionRequired",
    "asset_data",
    "registry_router",
    "transition_data",
    "version_data",
]

VERBS = ("read", "write", "publish", "archive")


class PreconditionRequired(KeelError):
    """The request must say which state it expects to change."""

    status = 428
    slug = "precondition-required"
    title = "Precondition Required"


def kind_guard(verb: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller holds `registry:<kind>:<verb>` for the path's kind."""

    async def guard(request: Request) -> Principal:
        principal = current_principal(request)
        if principal is None:
            raise Unauthenticated("Sign in first.")
        if principal.via == "share":
            raise NotFound()
        kind = get_kind(str(request.path_params.get("kind", ""))).name
        permission = f"registry:{kind}:{verb}"
        if not principal.has(permission):
            raise Forbidden(f"This needs the {permission} permission.")
        return principal

    register_guard(guard, f"registry:<kind>:{verb}")
    return guard


_GUARDS = {verb: kind_guard(verb) for verb in VERBS}
Reader = Annotated[Principal, Depends(_GUARDS["read"])]
Writer = Annotated[Principal, Depends(_GUARDS["write"])]
Publisher = Annotated[Principal, Depends(_GUARDS["publish"])]
Archiver = Annotated[Principal, Depends(_GUARDS["archive"])]
Signed = Annotated[Principal, Depends(require_user)]
NameParam = Annotated[str, Path(pattern=NAME_PATTERN)]
VersionParam = Annotated[int, Path(ge=1, le=MAX_VERSION)]
TenantParam = Annotated[
    str | None,
    Query(max_length=36, description="Act in this tenant (deployment-level users only)"),
]


def asset_data(asset: Asset, published: int | None) -> dict[str, Any]:
    """An asset as the API shows it."""
    return {
        "id": asset.id,
        "kind": asset.kind,
        "name": asset.name,
        "tenant_id": asset.tenant_id,
        "state": asset.state,
        "published_version": published,
        "latest_version": asset.latest,
        "created_at": asset.created_at,
        "created_by": asset.created_by,
        "updated_at": asset.updated_at,
    }


def version_data(version: Version, *, content: bool = True) -> dict[str, Any]:
    """A version as the API shows it (`content=False` leaves the data out)."""
    data = {
        "number": version.number,
        "state": version.state,
        "problems": version.problems,
        "rollback_of": version.rollback_of,
        "note": version.note,
        "created_at": version.created_at,
        "created_by": version.created_by,
        "published_at": version.published_at,
        "published_by": version.published_by,
    }
    if content:
        data["data"] = version.data
    return data


def transition_data(row: Transition) -> dict[str, Any]:
    """A history entry as the API shows it."""
    return {
        "action": row.action,
        "version": row.version,
        "actor": row.actor,
        "at": row.at,
        "reason": row.reason,
        "detail": row.detail,
    }


async def _tenant(session: AsyncSession, actor: Principal, tenant: str | None) -> str | None:
    """The tenant the call acts in: a tenant user's own; a deployment user's `?tenant=`."""
    if actor.tenant_id is not None:
        if tenant is not None and tenant != actor.tenant_id:
            raise NotFound("no such tenant")
        return actor.tenant_id
    if tenant is not None and await session.get(Tenant, tenant) is None:
        raise NotFound("no such tenant")
    return tenant


def registry_router(keel: Keel) -> APIRouter:  # noqa: PLR0915 - one closure per route
    """Routes under /api/v1/registry."""
    router = APIRouter(prefix="/api/v1/registry", tags=["registry"])

    async def find(
        session: AsyncSession,
        actor: Principal,
        kind: str,
        name: str,
        tenant: str | None,
        *,
        lock: bool = False,
    ) -> Asset:
        scope = await _tenant(session, actor, tenant)
        return await service.find_asset(session, kind, name, tenant_id=scope, lock=lock)

    @router.get("/kinds", summary="The registered asset kinds", responses=problem_responses(401))
    async def kinds(actor: Signed) -> list[dict[str, Any]]:
        return [
            {
                "name": kind.name,
                "description": kind.description,
                "text_fields": list(kind.text_fields),
                "references": [
                    {"path": path, "kind": target, "many": many} for path, target, many in kind.refs
                ],
                "schema": kind.model.model_json_schema(),
                "readable": actor.has(f"registry:{kind.name}:read"),
            }
            for kind in registered_kinds()
        ]

    @router.get(
        "/{kind}", summary="Assets of a kind, by name", responses=problem_responses(401, 403, 404)
    )
    async def list_assets(  # noqa: PLR0917 - one parameter per query filter
        kind: str,
        actor: Reader,
        tenant: TenantParam = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        state: Annotated[str | None, Query(pattern="^(active|archived)$")] = None,
    ) -> AssetPage:
        async with keel.db.session() as session:
            scope = await _tenant(session, actor, tenant)
            query = (
                tenant_scope(cast("Select[Any]", select(Asset, Version.number)), Asset, actor)
                .outerjoin(Version, Version.id == Asset.head_id)
                .where(
                    Asset.kind == kind,
                    Asset.tenant_id.is_(None) if scope is None else Asset.tenant_id == scope,
                )
                .order_by(Asset.name)
                .limit(limit)
            )
            if state is not None:
                query = query.where(Asset.state == state)
            if cursor is not None:
                query = query.where(Asset.name > cursor)
            rows = list(await session.execute(query))
        items = [asset_data(asset, number) for asset, number in rows]
        return AssetPage(items=items, next_cursor=rows[-1][0].name if len(rows) == limit else None)

    @router.post(
        "/{kind}",
        status_code=201,
        summary="Create an asset with its first draft",
        responses=problem_responses(401, 403, 404, 409, 422),
    )
    async def create(
        kind: str, body: AssetIn, actor: Writer, tenant: TenantParam = None
    ) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            scope = await _tenant(session, actor, tenant)
            asset, version = await service.create_asset(
                session, kind, body.name, body.data, tenant_id=scope, note=body.note
            )
            return {**asset_data(asset, None), "version": version_data(version)}

    @router.get(
        "/{kind}/{name}",
        summary="An asset with its published version",
        responses=problem_responses(401, 403, 404),
    )
    async def show(
        kind: str, name: NameParam, actor: Reader, tenant: TenantParam = None
    ) -> dict[str, Any]:
        async with keel.db.session() as session:
            asset = await find(session, actor, kind, name, tenant)
            head = await session.get(Version, asset.head_id) if asset.head_id else None
            return {
                **asset_data(asset, head.number if head else None),
                "published": version_data(head) if head else None,
            }

    @router.post(
        "/{kind}/{name}/versions",
        status_code=201,
        summary="Add a draft version",
        responses=problem_responses(401, 403, 404, 409, 422),
    )
    async def draft(
        kind: str, name: NameParam, body: DraftIn, actor: Writer, tenant: TenantParam = None
    ) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            asset = await find(session, actor, kind, name, tenant, lock=True)
            return version_data(await service.add_draft(session, asset, body.data, note=body.note))

    @router.get(
        "/{kind}/{name}/versions",
        summary="An asset's versions, newest first (without content)",
        responses=problem_responses(401, 403, 404),
    )
    async def list_versions(
        kind: str, name: NameParam, actor: Reader, tenant: TenantParam = None
    ) -> list[dict[str, Any]]:
        async with keel.db.session() as session:
            asset = await find(session, actor, kind, name, tenant)
            rows = await service.versions(session, asset)
        return [version_data(row, content=False) for row in rows]

    @router.get(
        "/{kind}/{name}/versions/{version}",
        summary="One version with its content",
        responses=problem_responses(401, 403, 404),
    )
    async def show_version(
        kind: str, name: NameParam, version: VersionParam, actor: Reader, tenant: TenantParam = None
    ) -> dict[str, Any]:
        async with keel.db.session() as session:
            asset = await find(session, actor, kind, name, tenant)
            return version_data(await service.get_version(session, asset, version))

    @router.post(
        "/{kind}/{name}/versions/{version}/validate",
        summary="Validate a draft (its problems are stored and returned)",
        responses=problem_responses(401, 403, 404, 409),
    )
    async def validate(
        kind: str, name: NameParam, version: VersionParam, actor: Writer, tenant: TenantParam = None
    ) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            asset = await find(session, actor, kind, name, tenant, lock=True)
            return version_data(await service.validate(session, asset, version))

    @router.post(
        "/{kind}/{name}/versions/{version}/publish",
        summary="Publish a validated version (the asset's one published version)",
        responses=problem_responses(401, 403, 404, 409, 422, 428),
    )
    async def publish(  # noqa: PLR0917 - path, body, guard and tenant
        kind: str,
        name: NameParam,
        version: VersionParam,
        actor: Publisher,
        body: PublishIn | None = None,
        tenant: TenantParam = None,
    ) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            asset = await find(session, actor, kind, name, tenant, lock=True)
            if body is None or "expected_head" not in body.model_fields_set:
                # After the lookup: another tenant's asset stays a 404.
                raise PreconditionRequired(
                    "say which version you expect to replace",
                    errors=[
                        {
                            "location": "body",
                            "pointer": "/expected_head",
                            "detail": "required: the published version you saw (null: none)",
                            "code": "missing",
                        }
                    ],
                    hint="read the asset's published_version and send it as expected_head",
                )
            published = await service.publish(
                session,
                asset,
                version,
                reason=body.reason,
                expected_head=body.expected_head,
                check_head=True,
            )
            return version_data(published)

    @router.post(
        "/{kind}/{name}/rollback",
        summary="Publish an earlier version's content as a new version",
        responses=problem_responses(401, 403, 404, 409, 422),
    )
    async def rollback(
        kind: str, name: NameParam, body: RollbackIn, actor: Publisher, tenant: TenantParam = None
    ) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            asset = await find(session, actor, kind, name, tenant, lock=True)
            return version_data(await service.rollback(session, asset, body.to, reason=body.reason))

    @router.post(
        "/{kind}/{name}/archive",
        summary="Archive an asset (refused while others reference it, unless forced)",
        responses=problem_responses(401, 403, 404, 409, 422),
    )
    async def archive(
        kind: str,
        name: NameParam,
        actor: Archiver,
        body: ArchiveIn | None = None,
        tenant: TenantParam = None,
    ) -> dict[str, Any]:
        body = body or ArchiveIn()
        async with keel.db.transaction() as session:
            asset = await find(session, actor, kind, name, tenant, lock=True)
            left = await service.archive(session, asset, reason=body.reason, force=body.force)
            return {**asset_data(asset, None), "dangling_dependents": left}

    @router.get(
        "/{kind}/{name}/dependents",
        summary="Assets whose published version references this one",
        responses=problem_responses(401, 403, 404),
    )
    async def dependents(
        kind: str, name: NameParam, actor: Reader, tenant: TenantParam = None
    ) -> list[dict[str, Any]]:
        async with keel.db.session() as session:
            asset = await find(session, actor, kind, name, tenant)
            return await service.dependents(session, asset)

    @router.get(
        "/{kind}/{name}/diff",
        summary="Differences between two versions",
        responses=problem_responses(401, 403, 404, 422),
    )
    async def diff(  # noqa: PLR0917 - path, two versions, guard and tenant
        kind: str,
        name: NameParam,
        actor: Reader,
        from_: Annotated[int, Query(alias="from", ge=1, le=MAX_VERSION)],
        to: Annotated[int, Query(ge=1, le=MAX_VERSION)],
        tenant: TenantParam = None,
    ) -> dict[str, Any]:
        async with keel.db.session() as session:
            asset = await find(session, actor, kind, name, tenant)
            old = await service.get_version(session, asset, from_)
            new = await service.get_version(session, asset, to)
        return {
            "from": from_,
            "to": to,
            "changes": structural_diff(old.data, new.data),
            "text": text_diffs(
                old.data, new.data, get_kind(kind).text_fields, (f"v{from_}", f"v{to}")
            ),
        }

    @router.get(
        "/{kind}/{name}/history",
        summary="Who did what to the asset, when and why",
        responses=problem_responses(401, 403, 404),
    )
    async def history(
        kind: str, name: NameParam, actor: Reader, tenant: TenantParam = None
    ) -> list[dict[str, Any]]:
        async with keel.db.session() as session:
            asset = await find(session, actor, kind, name, tenant)
            return [transition_data(row) for row in await service.history(session, asset)]

    return router
