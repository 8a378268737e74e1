"""API keys: long-lived credentials for scripts and services, shown once, stored as digests.

A key is `keel_<prefix>_<secret>`: the prefix finds the row, the secret's SHA-256 must match.
A personal key acts as its user with its scopes narrowed to what the user still holds; a
service key (no user) acts in its tenant with its scopes. Resolution is cached per process for
a few seconds; a revocation or a change to the user's rights drops the cache entry at once.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.database import Database
from keel.core.errors import Forbidden, NotFound, ValidationFailed
from keel.core.ids import new_id, new_secret, secret_digest
from keel.identity.access import Catalog, tenant_scope, user_permissions
from keel.identity.models import ApiKey, Tenant, User, UserStatus
from keel.identity.principal import Principal
from keel.identity.revocation import RevocationSet
from keel.identity.tokens import InvalidToken

__all__ = [
    "API_KEY_PATTERN",
    "ApiKeyResolver",
    "checked_grant",
    "create_api_key",
    "get_api_key",
    "list_api_keys",
    "revoke_api_key",
]

API_KEY_PATTERN = re.compile(r"keel_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
CACHE_TTL = 5.0
"""Seconds a resolved key is trusted without reading its row again."""
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _field_error(pointer: str, detail: str, code: str) -> ValidationFailed:
    return ValidationFailed(
        detail,
        errors=[{"location": "body", "pointer": pointer, "detail": detail, "code": code}],
    )


def checked_grant(
    catalog: Catalog, actor: Principal, permissions: Sequence[str], *, field: str
) -> list[str]:
    """`permissions` validated as a grant `actor` may hand out (known, non-empty, held)."""
    wanted = catalog.check_known(permissions, field=field)
    if not wanted:
        raise _field_error(f"/{field}", "grant at least one permission", "empty")
    missing = [name for name in wanted if not actor.has(name)]
    if missing:
        raise Forbidden(f"You cannot grant permissions you do not hold: {', '.join(missing)}.")
    return wanted


async def create_api_key(
    session: AsyncSession,
    catalog: Catalog,
    actor: Principal,
    *,
    name: str,
    scopes: Sequence[str],
    expires_at: datetime | None = None,
    service_tenant_id: str | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its plaintext (shown once). `service_tenant_id`: a tenant service key."""
    if actor.via in ("api_key", "share"):
        # A stolen key that could mint keys would outlive its own revocation.
        raise Forbidden("API keys are created by a signed-in user, not by a key or a link.")
    now = datetime.now(UTC)
    if expires_at is not None and expires_at.utcoffset() is None:
        # A time without an offset means nothing on its own (and cannot be compared or stored).
        raise _field_error("/expires_at", "expires_at needs a time zone (e.g. Z)", "naive")
    if expires_at is not None and expires_at <= now:
        raise _field_error("/expires_at", "expires_at must be in the future", "past")
    wanted = checked_grant(catalog, actor, scopes, field="scopes")
    user_id: str | None = actor.user_id
    tenant_id = actor.tenant_id
    if service_tenant_id is not None:
        if not actor.has("api-keys:manage"):
            raise Forbidden("Service keys need the api-keys:manage permission.")
        tenant = await session.scalar(
            tenant_scope(select(Tenant).where(Tenant.id == service_tenant_id), Tenant, actor)
        )
        if tenant is None:
            raise NotFound("no such tenant")
        user_id, tenant_id = None, tenant.id
    elif user_id is None:
        raise Forbidden("Only a user can hold a personal key.")
    prefix = secrets.token_hex(6)
    secret = new_secret()
    row = ApiKey(
        id=new_id(),
        prefix=prefix,
        secret_hash=secret_digest(secret),
        name=name.strip()[:200] or "key",
        user_id=user_id,
        tenant_id=tenant_id,
        created_by=actor.user_id,
        scopes=wanted,
        created_at=now,
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    return row, f"keel_{prefix}_{secret}"


def _visible_keys(actor: Principal) -> Select[ApiKey]:
    query = tenant_scope(select(ApiKey), ApiKey, actor)
    if not actor.has("api-keys:manage"):
        # A service key has no user: `user_id == None` would be `IS NULL`, every service key
        # of the tenant. It sees itself only.
        query = query.where(
            ApiKey.user_id == actor.user_id
            if actor.user_id is not None
            else ApiKey.id == actor.api_key_id
        )
    return query


async def list_api_keys(
    session: AsyncSession, actor: Principal, *, limit: int = 100, after: str | None = None
) -> Sequence[ApiKey]:
    """The keys `actor` may see: its own, or its tenant's with api-keys:manage."""
    query = _visible_keys(actor).order_by(ApiKey.id).limit(max(1, min(limit, 1000)))
    if after is not None:
        query = query.where(ApiKey.id > after)
    return (await session.scalars(query)).all()


async def get_api_key(session: AsyncSession, actor: Principal, key_id: str) -> ApiKey:
    """One key `actor` may see, else `NotFound`."""
    row = await session.scalar(_visible_keys(actor).where(ApiKey.id == key_id))
    if row is None:
        raise NotFound("no such API key")
    return row


async def revoke_api_key(session: AsyncSession, actor: Principal, key_id: str) -> ApiKey:
    """Revoke a key (idempotent); every process stops accepting it within a second."""
    row = await get_api_key(session, actor, key_id)
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        RevocationSet.add(session, "apikey", row.id, expires_at=row.revoked_at + timedelta(hours=1))
    return row


@dataclass(slots=True)
class _Entry:
    key_id: str
    secret_hash: str
    principal: Principal | None  # None: the key no longer works (revoked, expired, disabled)
    user_id: str | None
    expires_at: datetime | None
    last_used_at: datetime | None
    fetched: float


class ApiKeyResolver:
    """Turns a presented key into a principal, with a short per-process cache."""

    def __init__(self, db: Database, catalog: Catalog, revocations: RevocationSet) -> None:
        self.db = db
        self.catalog = catalog
        self.revocations = revocations
        self._cache: dict[str, _Entry] = {}
        revocations.on_revoke(self._forget)

    def _forget(self, kind: str, value: str) -> None:
        if kind == "apikey":
            self._cache = {p: e for p, e in self._cache.items() if e.key_id != value}
        elif kind == "user":
            self._cache = {p: e for p, e in self._cache.items() if e.user_id != value}

    async def resolve(self, presented: str) -> Principal:
        """The principal behind a key, or `InvalidToken`."""
        match = API_KEY_PATTERN.fullmatch(presented)
        if match is None:
            raise InvalidToken("The API key is malformed.")
        prefix, secret = match.groups()
        entry = self._cache.get(prefix)
        if entry is None or time.monotonic() - entry.fetched > CACHE_TTL:
            entry = await self._load(prefix)
            if len(self._cache) >= 10_000:
                del self._cache[next(iter(self._cache))]
            self._cache[prefix] = entry
        if not hmac.compare_digest(entry.secret_hash, secret_digest(secret)):
            raise InvalidToken("The API key is not valid.")
        now = datetime.now(UTC)
        if (
            entry.principal is None
            or entry.key_id in self.revocations.apikey
            or (entry.expires_at is not None and entry.expires_at <= now)
        ):
            raise InvalidToken("The API key is revoked, expired or its owner is disabled.")
        if entry.last_used_at is None or now - entry.last_used_at >= LAST_USED_RESOLUTION:
            entry.last_used_at = now
            async with self.db.transaction() as session:
                await session.execute(
                    # unscoped: the key just authenticated records its own use.
                    update(ApiKey).where(ApiKey.id == entry.key_id).values(last_used_at=now)
                )
        return entry.principal

    async def _load(self, prefix: str) -> _Entry:
        async with self.db.session() as session:
            # unscoped: authentication looks a key up by its prefix before any tenant is known.
            row = await session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
            if row is None:
                # A digest no secret matches: an unknown prefix costs what a wrong secret does.
                return _Entry("", "0" * 64, None, None, None, None, time.monotonic())
            principal: Principal | None = None
            if row.revoked_at is None:
                if row.user_id is None:
                    principal = Principal(
                        user_id=None,
                        via="api_key",
                        permissions=frozenset(row.scopes),
                        tenant_id=row.tenant_id,
                        display_name=row.name,
                        api_key_id=row.id,
                    )
                else:
                    user = await session.get(User, row.user_id)
                    if user is not None and user.status == UserStatus.ACTIVE:
                        held = self.catalog.expand(
                            await user_permissions(session, self.catalog, user)
                        )
                        principal = Principal(
                            user_id=user.id,
                            via="api_key",
                            permissions=frozenset(row.scopes) & held,
                            tenant_id=user.tenant_id,
                            email=user.email,
                            display_name=user.display_name,
                            api_key_id=row.id,
                        )
        return _Entry(
            row.id,
            row.secret_hash,
            principal,
            row.user_id,
            row.expires_at,
            row.last_used_at,
            time.monotonic(),
        )
