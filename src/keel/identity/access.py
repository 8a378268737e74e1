"""Permissions, roles, route guards and tenant scoping.

Permissions are strings declared by the modules that own them; the built-in roles are derived
from those declarations, custom roles are rows. A route is guarded by `require(…)` (or marked
`public`), and every query on a tenant-scoped table goes through `tenant_scope`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from fastapi import Request
from sqlalchemy import Delete, Select, Update, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.errors import Forbidden, NotFound, StartupError, Unauthenticated, ValidationFailed
from keel.core.guards import guard_kind, public, register_guard
from keel.core.modules import PermissionSpec
from keel.identity.models import Role, RoleAssignment, Tenant, User
from keel.identity.principal import Principal, current_principal, require_user

__all__ = [
    "BUILTIN_ROLES",
    "IDENTITY_PERMISSIONS",
    "Catalog",
    "guard_kind",
    "permission_catalog_of",
    "public",
    "require",
    "require_any",
    "same_tenant",
    "tenant_scope",
    "user_permissions",
    "user_roles",
]

BUILTIN_ROLES = ("owner", "admin", "operator", "viewer")
_PERMISSION = re.compile(r"[a-z][a-z0-9-]*(:[a-z0-9-]+)+")

IDENTITY_PERMISSIONS = (
    PermissionSpec("users:read", "See users, their roles and lockouts", ("admin", "operator")),
    PermissionSpec("users:manage", "Create, change, disable and unlock users", ("admin",)),
    PermissionSpec("roles:manage", "Create and delete custom roles", ("admin",)),
    PermissionSpec("tenants:manage", "Create and list tenants (deployment-wide)", ()),
    PermissionSpec("api-keys:create", "Create personal API keys", ("admin", "operator", "viewer")),
    PermissionSpec("api-keys:manage", "Create service keys; see and revoke anyone's keys"),
    PermissionSpec("shares:create", "Share a resource by link", ("admin", "operator", "viewer")),
    PermissionSpec("shares:manage", "See and revoke anyone's share links"),
)


class Catalog:
    """Every declared permission and what each built-in role holds."""

    def __init__(self, specs: Iterable[PermissionSpec]) -> None:
        self.permissions: dict[str, PermissionSpec] = {}
        for spec in specs:
            if not _PERMISSION.fullmatch(spec.name):
                raise StartupError(
                    f"permission {spec.name!r} is not of the form resource:verb",
                    hint="use lower-case words separated by ':' (e.g. jobs:cancel)",
                )
            if spec.name in self.permissions:
                raise StartupError(f"permission {spec.name!r} is declared twice")
            unknown = set(spec.roles) - set(BUILTIN_ROLES[1:])
            if unknown:
                raise StartupError(
                    f"permission {spec.name!r} names unknown roles {sorted(unknown)}",
                    hint="built-in roles are admin, operator and viewer (owner holds all)",
                )
            self.permissions[spec.name] = spec
        self.builtin: dict[str, frozenset[str]] = {"owner": frozenset({"*"})}
        for role in BUILTIN_ROLES[1:]:
            self.builtin[role] = frozenset(
                name for name, spec in self.permissions.items() if role in spec.roles
            )

    def check_known(self, permissions: Iterable[str], *, field: str = "permissions") -> list[str]:
        """`permissions` sorted and deduplicated; `ValidationFailed` naming any unknown one."""
        wanted = sorted(set(permissions))
        unknown = [name for name in wanted if name not in self.permissions]
        if unknown:
            raise ValidationFailed(
                f"unknown permission(s): {', '.join(unknown)}",
                errors=[
                    {
                        "location": "body",
                        "pointer": f"/{field}",
                        "detail": f"unknown permission {name!r}",
                        "code": "unknown_permission",
                    }
                    for name in unknown
                ],
            )
        return wanted

    def expand(self, held: Iterable[str]) -> frozenset[str]:
        """`held` with `*` replaced by every declared permission."""
        held = frozenset(held)
        return frozenset(self.permissions) if "*" in held else held

    @staticmethod
    def covers(held: frozenset[str], wanted: Iterable[str]) -> bool:
        """Whether a holder of `held` may hand out every permission in `wanted`."""
        return "*" in held or set(wanted) <= held


async def user_roles(session: AsyncSession, user_id: str) -> list[str]:
    """The names of the roles a user holds."""
    return sorted(
        (
            await session.scalars(
                select(RoleAssignment.role).where(RoleAssignment.user_id == user_id)
            )
        ).all()
    )


async def user_permissions(session: AsyncSession, catalog: Catalog, user: User) -> frozenset[str]:
    """The union of the permissions of the user's roles (`*` for an owner)."""
    roles = await user_roles(session, user.id)
    held: set[str] = set()
    custom: list[str] = []
    for role in roles:
        if role in catalog.builtin:
            held |= catalog.builtin[role]
        else:
            custom.append(role)
    if custom:
        # unscoped: a user's own custom roles, of its tenant or deployment-wide.
        rows = await session.scalars(
            select(Role.permissions).where(
                Role.name.in_(custom),
                or_(Role.tenant_id == user.tenant_id, Role.tenant_id.is_(None))
                if user.tenant_id is not None
                else Role.tenant_id.is_(None),
            )
        )
        for permissions in rows:
            held |= set(permissions)
    return frozenset(held)


# --- route guards --------------------------------------------------------------------------

register_guard(require_user, "signed-in user")


def require(
    permission: str, *, resource: tuple[str, str] | None = None
) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency that returns the caller if it holds `permission`.

    401 without a principal, 403 without the permission. `resource=(type, path_param)` names
    the resource the route acts on, which a share link must match (otherwise 404: a link
    reveals nothing beyond its one resource). Routes without `resource` refuse share links.
    """

    async def guard(request: Request) -> Principal:
        principal = current_principal(request)
        if principal is None:
            raise Unauthenticated("Sign in first.")
        if principal.via == "share" and (
            resource is None
            or principal.share_resource
            != (
                resource[0],
                request.path_params.get(resource[1]),
            )
        ):
            raise NotFound()
        if not principal.has(permission):
            raise Forbidden(f"This needs the {permission} permission.")
        return principal

    register_guard(guard, permission)
    return guard


def require_any(permissions: Sequence[str]) -> Callable[[Request], Awaitable[Principal]]:
    """Like `require`, satisfied by any one of `permissions`."""

    async def guard(request: Request) -> Principal:
        principal = await require_user(request)
        if not any(principal.has(name) for name in permissions):
            raise Forbidden(f"This needs one of: {', '.join(permissions)}.")
        return principal

    register_guard(guard, " | ".join(permissions))
    return guard


# --- tenant scoping ------------------------------------------------------------------------

Q = TypeVar("Q", Select[Any], Update, Delete)


def tenant_scope(query: Q, model: type[Any], principal: Principal | None) -> Q:
    """Confine `query` on a tenant-scoped `model` to the principal's tenant.

    A deployment-level principal (no tenant) sees every tenant; None (the system: CLI, jobs)
    too. `Tenant` itself is scoped by its id.
    """
    if principal is None or principal.tenant_id is None:
        return query
    column = Tenant.id if model is Tenant else model.tenant_id
    return query.where(column == principal.tenant_id)


def same_tenant(principal: Principal | None, tenant_id: str | None) -> bool:
    """Whether a row of `tenant_id` is visible to `principal` (the rule `tenant_scope` applies)."""
    return principal is None or principal.tenant_id is None or principal.tenant_id == tenant_id


def permission_catalog_of(modules: Iterable[Any]) -> Catalog:
    """The catalog of every permission the kernel's modules declare."""
    specs: list[PermissionSpec] = []
    for module in modules:
        specs.extend(module.permissions)
    return Catalog(specs)
