"""Registry logic: create, validate, publish, roll back and archive assets; references,
dependents and history. Every function takes the session first and writes its history row,
its audit event and its change notice in the caller's transaction."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit import current_actor, record
from keel.core.changes import announce
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.ids import new_id
from keel.registry.kinds import Kind, get_kind
from keel.registry.models import (
    Asset,
    AssetState,
    Reference,
    Transition,
    Version,
    VersionState,
)

__all__ = [
    "TOPIC",
    "add_draft",
    "archive",
    "create_asset",
    "dependents",
    "find_asset",
    "get_version",
    "history",
    "publish",
    "rollback",
    "validate",
    "versions",
]

_DEADLOCK = "40P01"  # PostgreSQL's deadlock_detected

TOPIC = "registry"
"""The change-notice topic every registry write announces."""


def _actor() -> str:
    who = current_actor()
    if who is None:
        return "system:unknown"
    if who.type == "system" or not who.id:
        return who.id or who.type  # a system actor's id already reads `system:<what>`
    return f"{who.type}:{who.id}"


def _now() -> datetime:
    return datetime.now(UTC)


def _locked(query: Select[Any], *, share: bool = False) -> Select[Any]:
    # FOR UPDATE / FOR SHARE on PostgreSQL; SQLite ignores it (its writers are serialised).
    return query.with_for_update(read=share)


async def find_asset(
    session: AsyncSession,
    kind: str,
    name: str,
    *,
    tenant_id: str | None,
    lock: bool = False,
) -> Asset:
    """The asset `kind`/`name` of `tenant_id` (None: deployment-wide), or `NotFound`."""
    # unscoped: the caller resolved `tenant_id` from the principal (api.py's `_tenant`).
    query = select(Asset).where(
        Asset.kind == kind,
        Asset.name == name,
        Asset.tenant_id.is_(None) if tenant_id is None else Asset.tenant_id == tenant_id,
    )
    asset = await session.scalar(_locked(query) if lock else query)
    if asset is None:
        raise NotFound(f"no {kind} asset named {name!r}")
    return asset  # type: ignore[no-any-return]


async def get_version(session: AsyncSession, asset: Asset, number: int) -> Version:
    """Version `number` of `asset`, or `NotFound`."""
    # unscoped: `asset` was found within the caller's tenant.
    version = await session.scalar(
        select(Version).where(Version.asset_id == asset.id, Version.number == number)
    )
    if version is None:
        raise NotFound(f"{asset.kind} {asset.name!r} has no version {number}")
    return version


async def versions(session: AsyncSession, asset: Asset) -> list[Version]:
    """Every version of `asset`, newest first."""
    # unscoped: `asset` was found within the caller's tenant.
    rows = await session.scalars(
        select(Version).where(Version.asset_id == asset.id).order_by(Version.number.desc())
    )
    return list(rows)


async def history(session: AsyncSession, asset: Asset) -> list[Transition]:
    """Every transition of `asset`, oldest first."""
    # unscoped: `asset` was found within the caller's tenant.
    rows = await session.scalars(
        select(Transition).where(Transition.asset_id == asset.id).order_by(Transition.id)
    )
    return list(rows)


_CHANGES_PUBLISHED = frozenset({"publish", "rollback", "archive"})
"""Transitions that change what is published (the cache's content); drafts and validations
are not announced, so they cost no process a reload."""


async def _log(
    session: AsyncSession,
    asset: Asset,
    action: str,
    *,
    version: int | None,
    reason: str | None,
    detail: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    now = _now()
    asset.revision += 1
    asset.updated_at = now
    session.add(
        Transition(
            asset_id=asset.id,
            tenant_id=asset.tenant_id,
            action=action,
            version=version,
            actor=_actor(),
            at=now,
            reason=reason,
            detail=detail,
        )
    )
    await record(
        session,
        f"registry.{action}",
        resource=(f"registry:{asset.kind}", asset.id),
        before=before,
        after={"name": asset.name, "version": version, **(after or {}), **(detail or {})},
        reason=reason,
        tenant_id=asset.tenant_id,
    )
    await session.flush()
    if action in _CHANGES_PUBLISHED:
        await announce(session, TOPIC)


async def _new_version(
    session: AsyncSession,
    kind: Kind,
    asset: Asset,
    data: Any,
    *,
    note: str | None,
    rollback_of: int | None = None,
) -> Version:
    content = kind.parse(data)
    if kind.normalize is not None:
        # CPU work like the validators (it may parse SQL): off the event loop.
        content = await asyncio.to_thread(kind.normalize, content)
    asset.latest += 1
    version = Version(
        id=new_id(),
        asset_id=asset.id,
        tenant_id=asset.tenant_id,
        number=asset.latest,
        state=VersionState.DRAFT,
        data=content.model_dump(mode="json"),
        problems=None,
        rollback_of=rollback_of,
        note=note,
        created_at=_now(),
        created_by=_actor(),
    )
    session.add(version)
    await session.flush()
    for target_kind, target_name in kind.references(content):
        session.add(
            Reference(version_id=version.id, target_kind=target_kind, target_name=target_name)
        )
    return version


async def create_asset(
    session: AsyncSession,
    kind_name: str,
    name: str,
    data: Any,
    *,
    tenant_id: str | None,
    note: str | None = None,
) -> tuple[Asset, Version]:
    """A new asset with its first version, a draft; `Conflict` if the name is taken."""
    kind = get_kind(kind_name)
    kind.parse(data)  # bad content is a 422 before anything is written
    now = _now()
    asset = Asset(
        id=new_id(),
        kind=kind.name,
        name=name,
        tenant_id=tenant_id,
        state=AssetState.ACTIVE,
        head_id=None,
        latest=0,
        revision=0,
        created_at=now,
        created_by=_actor(),
        updated_at=now,
    )
    try:
        async with session.begin_nested():
            session.add(asset)
            await session.flush()
    except IntegrityError:
        raise Conflict(f"a {kind.name} asset named {name!r} already exists") from None
    version = await _new_version(session, kind, asset, data, note=note)
    await _log(session, asset, "create", version=version.number, reason=note)
    return asset, version


async def add_draft(
    session: AsyncSession, asset: Asset, data: Any, *, note: str | None = None
) -> Version:
    """A new draft version of `asset` (locked by the caller via `find_asset(lock=True)`)."""
    if asset.state == AssetState.ARCHIVED:
        raise Conflict(f"{asset.kind} {asset.name!r} is archived")
    version = await _new_version(session, get_kind(asset.kind), asset, data, note=note)
    await _log(session, asset, "draft", version=version.number, reason=note)
    return version


async def validate(session: AsyncSession, asset: Asset, number: int) -> Version:
    """Run the kind's validators on a draft: it becomes `validated`, or stays a draft with
    its problems stored. A version already validated is returned as it is."""
    version = await get_version(session, asset, number)
    if version.state != VersionState.DRAFT:
        if version.state == VersionState.VALIDATED:
            return version
        raise Conflict(f"version {number} is {version.state}; only drafts are validated")
    kind = get_kind(asset.kind)
    # Validators are CPU work (parsing SQL takes up to a second): off the event loop.
    problems = await asyncio.to_thread(kind.problems, kind.parse(version.data))
    version.problems = problems
    if not problems:
        version.state = VersionState.VALIDATED
    await _log(
        session,
        asset,
        "validate",
        version=number,
        reason=None,
        detail={"valid": not problems, "problems": problems},
    )
    return version


async def _check_references(session: AsyncSession, asset: Asset, version: Version) -> None:
    """Every asset `version` references has a published version; those assets stay locked
    (FOR SHARE) until the transaction ends, so a concurrent archive waits for it."""
    # unscoped: a version's references resolve within its own asset's tenant.
    refs = list(await session.scalars(select(Reference).where(Reference.version_id == version.id)))
    missing = []
    for ref in refs:
        query = select(Asset).where(
            Asset.kind == ref.target_kind,
            Asset.name == ref.target_name,
            Asset.tenant_id.is_(None)
            if asset.tenant_id is None
            else Asset.tenant_id == asset.tenant_id,
        )
        try:
            target = await session.scalar(_locked(query, share=True))
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != _DEADLOCK:
                raise
            # Two assets referencing each other, published at once: PostgreSQL aborted
            # this one.
            raise Conflict(
                f"{ref.target_kind}/{ref.target_name} is being published concurrently",
                hint="retry",
            ) from None
        if target is None or target.state != AssetState.ACTIVE or target.head_id is None:
            missing.append(f"{ref.target_kind}/{ref.target_name}")
    if missing:
        raise Conflict(
            f"referenced assets have no published version: {', '.join(missing)}",
            errors=[
                {
                    "location": "body",
                    "pointer": "/references",
                    "detail": f"{name} has no published version",
                    "code": "unpublished_reference",
                }
                for name in missing
            ],
            hint="publish them first",
        )


async def _make_head(session: AsyncSession, asset: Asset, version: Version) -> int | None:
    """Retire the current head and publish `version`; the previous head's number."""
    previous = None
    if asset.head_id is not None:
        # unscoped: the head of an asset found within the caller's tenant.
        head = await session.get(Version, asset.head_id)
        if head is not None:
            previous = head.number
            head.state = VersionState.RETIRED
            await session.flush()  # the partial unique index sees one published row
    version.state = VersionState.PUBLISHED
    version.published_at = _now()
    version.published_by = _actor()
    asset.head_id = version.id
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise Conflict(f"{asset.kind} {asset.name!r} was published concurrently") from None
    return previous


async def _revalidate(
    kind: Kind, version: Version, *, pointer: str, number: int | None = None
) -> None:
    """`ValidationFailed` (nothing changes) if `version` no longer passes the kind's rules."""
    problems = await asyncio.to_thread(kind.problems, kind.parse(version.data))
    if problems:
        raise ValidationFailed(
            f"version {number or version.number} no longer passes validation: "
            f"{'; '.join(problems)}",
            errors=[
                {"location": "body", "pointer": pointer, "detail": p, "code": "invalid"}
                for p in problems
            ],
            hint="fix it in a new draft",
        )


def _head_number(asset: Asset, head: Version | None) -> int | None:
    return head.number if head is not None and asset.head_id == head.id else None


async def publish(
    session: AsyncSession,
    asset: Asset,
    number: int,
    *,
    reason: str | None = None,
    expected_head: int | None = None,
    check_head: bool = False,
) -> Version:
    """Publish validated version `number` as the asset's one published version.

    `asset` must be locked (`find_asset(lock=True)`). `Conflict` if the asset is archived,
    the version is not `validated` (a draft, or already published by someone else), the head
    is not `expected_head` (when `check_head`), or a referenced asset has no published version;
    `ValidationFailed` if the version no longer passes the kind's validators (they run again).
    """
    if asset.state == AssetState.ARCHIVED:
        raise Conflict(f"{asset.kind} {asset.name!r} is archived")
    version = await get_version(session, asset, number)
    # unscoped: the head of an asset found within the caller's tenant.
    head = await session.get(Version, asset.head_id) if asset.head_id else None
    if check_head and _head_number(asset, head) != expected_head:
        raise Conflict(
            f"the published version is {_head_number(asset, head)}, not {expected_head}",
            hint="reload the asset and decide again",
        )
    if version.state != VersionState.VALIDATED:
        hint = "validate it first" if version.state == VersionState.DRAFT else None
        raise Conflict(f"version {number} is {version.state}, not validated", hint=hint)
    # The kind's rules may have changed since the version was validated: check it again.
    await _revalidate(get_kind(asset.kind), version, pointer="/version")
    await _check_references(session, asset, version)
    previous = await _make_head(session, asset, version)
    await _log(
        session,
        asset,
        "publish",
        version=number,
        reason=reason,
        before={"published": previous},
        after={"published": number},
    )
    return version


async def rollback(
    session: AsyncSession, asset: Asset, to: int, *, reason: str | None = None
) -> Version:
    """Publish the content of earlier version `to` as a new version (history is kept).

    `to` must have been published once; the copy is validated again (the kind's rules may
    have changed) and its references checked. `asset` must be locked.
    """
    if asset.state == AssetState.ARCHIVED:
        raise Conflict(f"{asset.kind} {asset.name!r} is archived")
    source = await get_version(session, asset, to)
    if source.state != VersionState.RETIRED:
        raise Conflict(
            f"version {to} is {source.state}; only a formerly published version can be "
            "rolled back to"
        )
    kind = get_kind(asset.kind)
    copy = await _new_version(session, kind, asset, source.data, note=reason, rollback_of=to)
    await _revalidate(kind, copy, pointer="/to", number=to)
    copy.problems = []
    copy.state = VersionState.VALIDATED
    await session.flush()
    await _check_references(session, asset, copy)
    previous = await _make_head(session, asset, copy)
    await _log(
        session,
        asset,
        "rollback",
        version=copy.number,
        reason=reason,
        before={"published": previous},
        after={"published": copy.number, "rollback_of": to},
    )
    return copy


async def dependents(session: AsyncSession, asset: Asset) -> list[dict[str, Any]]:
    """Active assets whose published version references `asset` (its impact list)."""
    # unscoped: references resolve within the asset's own tenant, filtered here.
    rows = await session.execute(
        select(Asset.kind, Asset.name, Version.number)
        .join(Version, Version.id == Asset.head_id)
        .join(Reference, Reference.version_id == Version.id)
        .where(
            Reference.target_kind == asset.kind,
            Reference.target_name == asset.name,
            Asset.id != asset.id,  # an asset naming itself does not hold itself up
            Asset.state == AssetState.ACTIVE,
            Asset.tenant_id.is_(None)
            if asset.tenant_id is None
            else Asset.tenant_id == asset.tenant_id,
        )
        .order_by(Asset.kind, Asset.name)
    )
    return [{"kind": k, "name": n, "version": v} for k, n, v in rows]


async def archive(
    session: AsyncSession, asset: Asset, *, reason: str | None = None, force: bool = False
) -> list[dict[str, Any]]:
    """Archive `asset` (locked by the caller); its published version is retired.

    Refused with `Conflict` listing the dependents while others reference it, unless `force`
    (which needs a reason). Returns the dependents left dangling.
    """
    if asset.state == AssetState.ARCHIVED:
        raise Conflict(f"{asset.kind} {asset.name!r} is already archived")
    found = await dependents(session, asset)
    if found and not force:
        listed = ", ".join(f"{d['kind']}/{d['name']}" for d in found)
        raise Conflict(
            f"{asset.kind} {asset.name!r} is referenced by {listed}",
            errors=[
                {
                    "location": "body",
                    "pointer": "/force",
                    "detail": f"{d['kind']}/{d['name']} (version {d['version']}) references it",
                    "code": "has_dependents",
                }
                for d in found
            ],
            hint="archive or change the dependents first, or force with a reason",
        )
    if force and found and not (reason and reason.strip()):
        raise ValidationFailed(
            "a forced archive needs a reason",
            errors=[
                {
                    "location": "body",
                    "pointer": "/reason",
                    "detail": "required when force is true",
                    "code": "missing",
                }
            ],
        )
    previous = None
    if asset.head_id is not None:
        # unscoped: the head of an asset found within the caller's tenant.
        head = await session.get(Version, asset.head_id)
        if head is not None:
            previous = head.number
            head.state = VersionState.RETIRED
    asset.head_id = None
    asset.state = AssetState.ARCHIVED
    await _log(
        session,
        asset,
        "archive",
        version=previous,
        reason=reason,
        detail={"forced": bool(force and found), "dependents": found},
    )
    return found
