"""Who is calling, and the guards and tenant scoping every module's routes use.

The identity module resolves the principal (and re-exports these names); they live in the
core so that modules left of identity (audit, settings) can guard and scope their routes.

A principal is resolved from a session cookie, a bearer access token, an API key or a share
link, and carries everything a route needs to authorise the call without another query:
its tenant and its effective permissions (already narrowed by a key's scopes or a share's
grant).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi import Request
from sqlalchemy import Delete, Select, Update
from starlette.requests import HTTPConnection

from keel.core.errors import Forbidden, NotFound, Unauthenticated
from keel.core.guards import register_guard

__all__ = [
    "PRINCIPAL_KEY",
    "SHARE_SPEND_KEY",
    "Principal",
    "Via",
    "current_principal",
    "require",
    "require_any",
    "require_user",
    "same_tenant",
    "tenant_scope",
]

PRINCIPAL_KEY = "keel.principal"
SHARE_SPEND_KEY = "keel.share_spend"
"""An async callable identity leaves for a share-link request: spends one use of the link."""

Via = Literal["session", "token", "api_key", "share"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    `user_id` is None only for a tenant service-account API key. `tenant_id` is None for a
    deployment-level account (it may act in every tenant its permissions allow).
    """

    user_id: str | None
    via: Via
    permissions: frozenset[str] = frozenset()
    tenant_id: str | None = None
    email: str = ""
    display_name: str = ""
    session_id: str | None = None
    csrf_token: str | None = None
    token_id: str | None = None
    token_family: str | None = None
    api_key_id: str | None = None
    share_id: str | None = None
    share_resource: tuple[str, str] | None = None

    def has(self, permission: str) -> bool:
        """Whether this caller holds `permission` (`*` holds all)."""
        return permission in self.permissions or "*" in self.permissions

    @property
    def rate_key(self) -> str:
        """The identity rate limits count against (a key or link is limited on its own)."""
        if self.api_key_id is not None:
            return f"key:{self.api_key_id}"
        if self.share_id is not None:
            return f"share:{self.share_id}"
        return f"user:{self.user_id}"


def current_principal(connection: HTTPConnection) -> Principal | None:
    """The request's principal, or None for an anonymous request."""
    principal = connection.scope.get(PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else None


async def require_user(connection: HTTPConnection) -> Principal:
    """FastAPI dependency: a signed-in person (not a share link or service key), or 401.

    Async so that FastAPI calls it inline rather than in a worker thread."""
    principal = current_principal(connection)
    if principal is None or principal.user_id is None or principal.via == "share":
        raise Unauthenticated("Sign in first.")
    return principal


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
        if principal.via == "share":
            spend = request.scope.get(SHARE_SPEND_KEY)
            if spend is None:
                raise NotFound()
            await spend()  # one use of the link, now that it reached its resource
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
    too. The tenants table itself (no `tenant_id` column) is scoped by its id.
    """
    if principal is None or principal.tenant_id is None:
        return query
    # A table of tenants is scoped by its own id.
    column = model.tenant_id if hasattr(model, "tenant_id") else model.id
    return query.where(column == principal.tenant_id)


def same_tenant(principal: Principal | None, tenant_id: str | None) -> bool:
    """Whether a row of `tenant_id` is visible to `principal` (the rule `tenant_scope` applies)."""
    return principal is None or principal.tenant_id is None or principal.tenant_id == tenant_id
