"""Share links: one resource, a subset of the sharer's permissions, an expiry, a use limit.

Sharing is delegation: a link grants at most what its sharer holds when it is made, and each
use grants only what the sharer still holds then. Every use is recorded; the use limit is
enforced by one conditional UPDATE, so parallel uses never exceed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit import Actor, record
from keel.core.database import Database
from keel.core.errors import NotFound, ValidationFailed
from keel.core.ids import new_id, new_secret, secret_digest
from keel.identity.access import Catalog, tenant_scope, user_permissions
from keel.identity.apikeys import checked_grant
from keel.identity.models import ShareLink, ShareUse, User, UserStatus
from keel.identity.principal import Principal
from keel.identity.tokens import InvalidToken

__all__ = [
    "MAX_SHARE_LIFETIME",
    "SHARE_PREFIX",
    "create_share",
    "find_share",
    "get_share",
    "list_shares",
    "revoke_share",
    "spend_share",
]

SHARE_PREFIX = "keel_sh_"
MAX_SHARE_LIFETIME = timedelta(days=30)


class InvalidShare(InvalidToken):
    """The share link is unknown, revoked, expired or used up, or its sharer lost access."""

    slug = "invalid-share"
    title = "Invalid Share Link"


async def create_share(
    session: AsyncSession,
    catalog: Catalog,
    actor: Principal,
    *,
    resource_type: str,
    resource_id: str,
    permissions: Sequence[str],
    expires_in: timedelta,
    max_uses: int | None = None,
    note: str = "",
) -> tuple[ShareLink, str]:
    """A new link and its token (shown once)."""
    if actor.user_id is None or actor.via in ("share", "api_key"):
        # A link made from a key or another link would outlive the rights it borrowed.
        raise InvalidShare("Only a signed-in user can share.")
    if not timedelta(minutes=1) <= expires_in <= MAX_SHARE_LIFETIME:
        raise ValidationFailed("a share link lasts between 1 minute and 30 days")
    if max_uses is not None and max_uses < 1:
        raise ValidationFailed("max_uses must be at least 1")
    wanted = checked_grant(catalog, actor, permissions, field="permissions")
    now = datetime.now(UTC)
    token = SHARE_PREFIX + new_secret()
    row = ShareLink(
        id=new_id(),
        token_hash=secret_digest(token),
        created_by=actor.user_id,
        tenant_id=actor.tenant_id,
        resource_type=resource_type,
        resource_id=resource_id,
        permissions=wanted,
        note=note[:500],
        created_at=now,
        expires_at=now + expires_in,
        max_uses=max_uses,
        uses=0,
    )
    session.add(row)
    await session.flush()
    return row, token


def _visible(actor: Principal) -> Select[ShareLink]:
    query = tenant_scope(select(ShareLink), ShareLink, actor)
    if not actor.has("shares:manage"):
        query = query.where(ShareLink.created_by == actor.user_id)
    return query


async def list_shares(
    session: AsyncSession, actor: Principal, *, limit: int = 100, after: str | None = None
) -> Sequence[ShareLink]:
    """The links `actor` may see: its own, or its tenant's with shares:manage."""
    query = _visible(actor).order_by(ShareLink.id).limit(max(1, min(limit, 1000)))
    if after is not None:
        query = query.where(ShareLink.id > after)
    return (await session.scalars(query)).all()


async def get_share(session: AsyncSession, actor: Principal, share_id: str) -> ShareLink:
    """One link `actor` may see, else `NotFound`."""
    row = await session.scalar(_visible(actor).where(ShareLink.id == share_id))
    if row is None:
        raise NotFound("no such share link")
    return row


async def revoke_share(session: AsyncSession, actor: Principal, share_id: str) -> ShareLink:
    """Revoke a link (idempotent): its next use fails."""
    row = await get_share(session, actor, share_id)
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
    return row


async def find_share(db: Database, catalog: Catalog, token: str) -> Principal:
    """The principal a link grants now (read only: nothing is spent), or `InvalidShare`.

    A use is spent by `spend_share` once a route has matched the link's resource, so requests
    that go elsewhere (a preview bot, a wrong URL) never consume one."""
    now = datetime.now(UTC)
    async with db.session() as session:
        # unscoped: authentication finds the link by its token before any tenant is known.
        row = await session.scalar(
            select(ShareLink).where(ShareLink.token_hash == secret_digest(token))
        )
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            raise InvalidShare()
        if row.max_uses is not None and row.uses >= row.max_uses:
            raise InvalidShare("The share link has been used up.")
        sharer = await session.get(User, row.created_by)
        if sharer is None or sharer.status != UserStatus.ACTIVE:
            raise InvalidShare()
        held = catalog.expand(await user_permissions(session, catalog, sharer))
    granted = frozenset(row.permissions) & held
    if not granted or sharer.tenant_id != row.tenant_id:
        raise InvalidShare()
    return Principal(
        user_id=sharer.id,
        via="share",
        permissions=granted,
        tenant_id=row.tenant_id,
        email=sharer.email,
        display_name=f"share link from {sharer.display_name}",
        share_id=row.id,
        share_resource=(row.resource_type, row.resource_id),
    )


async def spend_share(
    db: Database,
    principal: Principal,
    *,
    client_ip: str | None,
    user_agent: str | None,
    method: str,
    path: str,
) -> None:
    """Spend one use of the link behind `principal` and record it; `InvalidShare` when it
    was used up or revoked meanwhile (one conditional UPDATE: parallel uses never exceed the
    limit)."""
    if principal.share_id is None or principal.share_resource is None:
        raise InvalidShare()
    now = datetime.now(UTC)
    agent = (user_agent or "")[:300] or None
    async with db.transaction() as session:
        # unscoped: the link that just authenticated this request.
        spent = await session.execute(
            update(ShareLink)
            .where(
                ShareLink.id == principal.share_id,
                ShareLink.revoked_at.is_(None),
                ShareLink.expires_at > now,
                (ShareLink.max_uses.is_(None)) | (ShareLink.uses < ShareLink.max_uses),
            )
            .values(uses=ShareLink.uses + 1)
            .returning(ShareLink.id)
        )
        if spent.first() is None:
            raise InvalidShare("The share link has been used up or revoked.")
        await record(
            session,
            "share.use",
            resource=principal.share_resource,
            after={"share_id": principal.share_id, "method": method, "path": path[:200]},
            actor=Actor(
                "share",
                principal.share_id,
                f"share link from {principal.email}",
                principal.tenant_id,
                f"user:{principal.user_id}",
                client_ip,
                agent,
            ),
            tenant_id=principal.tenant_id,
        )
        session.add(
            ShareUse(
                share_id=principal.share_id,
                used_at=now,
                client_ip=client_ip,
                user_agent=agent,
                method=method[:10],
                path=path[:500],
            )
        )
