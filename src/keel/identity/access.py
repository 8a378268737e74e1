"""Permissions, roles, route guards and tenant scoping.

Permissions are strings declared by the modules that own them; the built-in roles are derived
from those declarations, custom roles are rows. A route is guarded by `require(…)` (or marked
`public`), and every query on a tenant-scoped table goes through `tenant_scope`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.errors import StartupError, ValidationFailed
from keel.core.guards import guard_kind, public
from keel.core.modules import PermissionSpec
from keel.core.principal import (
    require,
    require_any,
    same_tenant,
    tenant_scope,
)
from keel.identity.models import Role, RoleAssignment, User

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
# Segments after the first may hold `_` (registry kinds: `registry:sql_query:read`).
_PERMISSION = re.compile(r"[a-z][a-z0-9-]*(:[a-z0-9][a-z0-9_-]*)+")

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


def permission_catalog_of(modules: Iterable[Any]) -> Catalog:
    """The catalog of every permission the kernel's modules declare."""
    specs: list[PermissionSpec] = []
    for module in modules:
        specs.extend(module.permissions)
    return Catalog(specs)
