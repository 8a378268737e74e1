"""User accounts: create, find, list, disable. Signing in goes through `throttle.login`.

Every function takes the session first and changes nothing outside it: the caller's
transaction decides whether the change happens (and, once the audit module exists, its event
is written in that same transaction).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import delete, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.config import Config
from keel.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from keel.core.ids import new_id
from keel.identity.access import Catalog, tenant_scope, user_roles
from keel.identity.models import Role, RoleAssignment, Tenant, User, UserStatus
from keel.identity.passwords import check_policy, hash_password
from keel.identity.principal import Principal
from keel.identity.sessions import revoke_all_sessions
from keel.identity.tokens import revoke_user_tokens

__all__ = [
    "create_role",
    "create_tenant",
    "create_user",
    "delete_role",
    "disable_user",
    "end_everything",
    "find_tenant",
    "get_user",
    "get_user_by_email",
    "list_roles",
    "list_tenants",
    "list_users",
    "normalize_email",
    "prepare_password",
    "role_permissions",
    "set_roles",
    "set_status",
    "sign_out_everywhere",
]

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,61}[a-z0-9]")
_ROLES_LOCK = 0x6B65656C_726F6C65  # "keelrole"
_ROLE_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")


def normalize_email(email: str) -> str:
    """The stored form of an email (trimmed, lower-case); `ValidationFailed` if malformed."""
    value = email.strip().lower()
    if len(value) > 320 or _EMAIL.fullmatch(value) is None:
        raise ValidationFailed(
            f"{email.strip()!r} is not an email address.",
            errors=[
                {
                    "location": "body",
                    "pointer": "/email",
                    "detail": "not an email address",
                    "code": "email",
                }
            ],
        )
    return value


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    """The user with this email (any case), or None."""
    # unscoped: emails are unique across tenants; callers are the system (login, CLI).
    return await session.scalar(select(User).where(User.email == normalize_email(email)))


async def prepare_password(password: str, *, email: str) -> str:
    """Check `password` against the policy and hash it: call this *before* opening the
    transaction that creates or updates the user, so the slow hash holds no lock."""
    check_policy(password, email=normalize_email(email))
    return await hash_password(password)


async def create_user(
    session: AsyncSession,
    *,
    email: str,
    password_hash: str | None,
    display_name: str | None = None,
    tenant_id: str | None = None,
) -> User:
    """A new active user with a hash from `prepare_password` (None: no password yet), in
    `tenant_id` (None: a deployment-level account). Roles are given by `set_roles`."""
    address = normalize_email(email)
    # unscoped: an email is unique across all tenants.
    if await session.scalar(select(User.id).where(User.email == address)) is not None:
        raise Conflict(f"a user with email {address} already exists")
    now = datetime.now(UTC)
    user = User(
        id=new_id(),
        email=address,
        display_name=(display_name or address.split("@", 1)[0]).strip()[:200],
        status=UserStatus.ACTIVE,
        password_hash=password_hash,
        created_at=now,
        updated_at=now,
        password_changed_at=now if password_hash is not None else None,
        tenant_id=tenant_id,
    )
    try:
        # A savepoint, so a lost race leaves the caller's transaction usable (PostgreSQL
        # aborts the whole transaction on an error otherwise).
        async with session.begin_nested():
            session.add(user)
    except IntegrityError:
        raise Conflict(f"a user with email {address} already exists") from None
    return user


async def list_users(
    session: AsyncSession,
    *,
    status: str | None = None,
    limit: int = 100,
    after: str | None = None,
    actor: Principal | None = None,
) -> Sequence[User]:
    """Users in creation order (ids are time-ordered), `limit` at a time after id `after`;
    only the actor's tenant for a tenant's principal (None: the system sees all)."""
    query = (
        tenant_scope(select(User), User, actor).order_by(User.id).limit(max(1, min(limit, 1000)))
    )
    if status is not None:
        if status not in UserStatus.ALL:
            raise ValidationFailed(f"status must be one of {', '.join(UserStatus.ALL)}")
        query = query.where(User.status == status)
    if after is not None:
        query = query.where(User.id > after)
    return (await session.scalars(query)).all()


async def disable_user(session: AsyncSession, email: str, *, config: Config) -> User:
    """Disable the user: it can no longer sign in, and its sessions and tokens end.
    Disabling twice is not an error."""
    user = await get_user_by_email(session, email)
    if user is None:
        raise NotFound(f"no user with email {normalize_email(email)}")
    await set_status(session, user, UserStatus.DISABLED, config=config)
    return user


async def set_status(session: AsyncSession, user: User, status: str, *, config: Config) -> None:
    """Enable or disable `user`; disabling ends its sessions and revokes its tokens."""
    if status not in UserStatus.ALL:
        raise ValidationFailed(f"status must be one of {', '.join(UserStatus.ALL)}")
    if user.status != status:
        user.status = status
        user.updated_at = datetime.now(UTC)
    if status == UserStatus.DISABLED:
        await end_everything(session, user.id, config=config, reason="disabled")


async def end_everything(
    session: AsyncSession, user_id: str, *, config: Config, reason: str
) -> int:
    """End every session, refresh family and access token of a user; drop what processes
    cache about its rights. Returns the number of sessions ended."""
    ended = await revoke_all_sessions(session, user_id)
    await revoke_user_tokens(session, config, user_id, reason=reason)
    return ended


async def sign_out_everywhere(session: AsyncSession, email: str, *, config: Config) -> int:
    """End every session and token of the user (a lost laptop, a leaked cookie). Returns the
    number of sessions ended."""
    user = await get_user_by_email(session, email)
    if user is None:
        raise NotFound(f"no user with email {normalize_email(email)}")
    return await end_everything(session, user.id, config=config, reason="sign-out")


async def get_user(session: AsyncSession, actor: Principal | None, user_id: str) -> User:
    """The user `actor` may see, else `NotFound` (another tenant's user does not exist)."""
    user: User | None = await session.scalar(
        tenant_scope(select(User).where(User.id == user_id), User, actor)
    )
    if user is None:
        raise NotFound("no such user")
    return user


# --- roles -------------------------------------------------------------------------------


async def role_permissions(
    session: AsyncSession, catalog: Catalog, role: str, *, tenant_id: str | None
) -> frozenset[str]:
    """What `role` grants to a user of `tenant_id`; `ValidationFailed` if no such role."""
    if role in catalog.builtin:
        return catalog.builtin[role]
    # unscoped: the role must be the user's tenant's own or deployment-wide, as filtered here.
    rows = list(
        await session.scalars(
            select(Role.permissions).where(
                Role.name == role,
                or_(Role.tenant_id == tenant_id, Role.tenant_id.is_(None))
                if tenant_id is not None
                else Role.tenant_id.is_(None),
            )
        )
    )
    if not rows:
        raise ValidationFailed(
            f"no role named {role!r} here",
            errors=[
                {
                    "location": "body",
                    "pointer": "/roles",
                    "detail": f"unknown role {role!r}",
                    "code": "unknown_role",
                }
            ],
        )
    # The union, exactly as `user_permissions` grants it (names are unique across scopes, but
    # the check must never see less than the grant).
    return frozenset(name for permissions in rows for name in permissions)


async def set_roles(
    session: AsyncSession,
    catalog: Catalog,
    actor: Principal | None,
    user: User,
    roles: Sequence[str],
    *,
    config: Config,
) -> list[str]:
    """Give `user` exactly `roles`. No escalation: the actor must hold every permission the
    roles it adds or removes grant (only an owner makes or unmakes owners); None is the system
    (CLI). A change ends the user's sessions and tokens (no session outlives a privilege
    change). Returns the roles now held."""
    wanted = sorted(set(roles))
    current = await user_roles(session, user.id)
    if wanted == current:
        return current
    if actor is not None:
        for role in set(wanted) ^ set(current):
            granted = await role_permissions(session, catalog, role, tenant_id=user.tenant_id)
            if not Catalog.covers(actor.permissions, granted):
                raise Forbidden(
                    f"You cannot give or take the role {role!r}: it holds rights you do not."
                )
    for role in wanted:
        await role_permissions(session, catalog, role, tenant_id=user.tenant_id)
    await session.execute(delete(RoleAssignment).where(RoleAssignment.user_id == user.id))
    now = datetime.now(UTC)
    for role in wanted:
        session.add(RoleAssignment(user_id=user.id, role=role, created_at=now))
    user.updated_at = now
    await session.flush()
    await end_everything(session, user.id, config=config, reason="privilege-change")
    return wanted


async def create_role(
    session: AsyncSession,
    catalog: Catalog,
    actor: Principal | None,
    *,
    name: str,
    permissions: Sequence[str],
    description: str = "",
    tenant_id: str | None = None,
) -> Role:
    """A custom role in `tenant_id` (a tenant's actor: always its own tenant)."""
    if actor is not None and actor.tenant_id is not None:
        tenant_id = actor.tenant_id
    name = name.strip().lower()
    if not _ROLE_NAME.fullmatch(name) or name in catalog.builtin:
        raise ValidationFailed(
            f"{name!r} cannot name a custom role (lower-case letters, digits and '-'; "
            "not a built-in role)"
        )
    wanted = catalog.check_known(permissions)
    if actor is not None and not Catalog.covers(actor.permissions, wanted):
        raise Forbidden("You cannot create a role with rights you do not hold.")
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        # Serialise role creation: the cross-scope name check below must not race.
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ROLES_LOCK})
    # unscoped: a custom role's name must be free in its tenant, deployment-wide, and (for a
    # deployment-wide role) in every tenant: an assignment names a role, and one name must
    # never mean two roles with different rights.
    clash = select(Role.id).where(Role.name == name)
    if tenant_id is not None:
        clash = clash.where(or_(Role.tenant_id == tenant_id, Role.tenant_id.is_(None)))
    if await session.scalar(clash.limit(1)) is not None:
        raise Conflict(f"a role named {name!r} already exists here or deployment-wide")
    if tenant_id is not None and await session.get(Tenant, tenant_id) is None:
        raise NotFound("no such tenant")
    role = Role(
        id=new_id(),
        tenant_id=tenant_id,
        name=name,
        description=description[:500],
        permissions=wanted,
        created_at=datetime.now(UTC),
    )
    try:
        async with session.begin_nested():
            session.add(role)
    except IntegrityError:
        raise Conflict(f"a role named {name!r} already exists here") from None
    return role


async def list_roles(session: AsyncSession, actor: Principal | None) -> Sequence[Role]:
    """Custom roles visible to `actor`: its tenant's and the deployment-wide ones."""
    # unscoped: filtered below: the actor's tenant plus deployment-wide roles.
    query = select(Role).order_by(Role.name, Role.id)
    if actor is not None and actor.tenant_id is not None:
        query = query.where(or_(Role.tenant_id == actor.tenant_id, Role.tenant_id.is_(None)))
    return (await session.scalars(query)).all()


async def delete_role(session: AsyncSession, actor: Principal | None, role_id: str) -> None:
    """Delete a custom role nobody holds (`Conflict` naming how many hold it otherwise)."""
    role = await session.scalar(tenant_scope(select(Role).where(Role.id == role_id), Role, actor))
    if role is None:
        raise NotFound("no such role")
    holders = (
        select(RoleAssignment.user_id)
        .join(User, User.id == RoleAssignment.user_id)
        .where(RoleAssignment.role == role.name)
    )
    holders = holders.where(User.tenant_id == role.tenant_id) if role.tenant_id else holders
    count = len((await session.scalars(holders)).all())
    if count:
        raise Conflict(f"{count} user(s) hold the role {role.name!r}; take it from them first")
    await session.delete(role)


# --- tenants -----------------------------------------------------------------------------


async def create_tenant(session: AsyncSession, *, slug: str, name: str | None = None) -> Tenant:
    """A new tenant with a unique slug."""
    slug = slug.strip().lower()
    if not _SLUG.fullmatch(slug):
        raise ValidationFailed(
            f"{slug!r} is not a tenant slug (2-63 lower-case letters, digits and '-')",
            errors=[
                {"location": "body", "pointer": "/slug", "detail": "not a slug", "code": "slug"}
            ],
        )
    tenant = Tenant(
        id=new_id(), slug=slug, name=(name or slug).strip()[:200], created_at=datetime.now(UTC)
    )
    try:
        async with session.begin_nested():
            session.add(tenant)
    except IntegrityError:
        raise Conflict(f"a tenant with slug {slug!r} already exists") from None
    return tenant


async def find_tenant(session: AsyncSession, actor: Principal | None, ref: str) -> Tenant:
    """A tenant by id or slug that `actor` may see, else `NotFound`."""
    tenant: Tenant | None = await session.scalar(
        tenant_scope(
            select(Tenant).where(or_(Tenant.id == ref, Tenant.slug == ref.lower())), Tenant, actor
        )
    )
    if tenant is None:
        raise NotFound(f"no tenant {ref!r}")
    return tenant


async def list_tenants(
    session: AsyncSession, actor: Principal | None, *, limit: int = 100, after: str | None = None
) -> Sequence[Tenant]:
    """Tenants `actor` may see (a tenant's principal: its own)."""
    query = (
        tenant_scope(select(Tenant), Tenant, actor)
        .order_by(Tenant.id)
        .limit(max(1, min(limit, 1000)))
    )
    if after is not None:
        query = query.where(Tenant.id > after)
    return (await session.scalars(query)).all()
