"""Who is calling: the principal the identity middleware resolved for this request.

A principal is resolved from a session cookie, a bearer access token, an API key or a share
link, and carries everything a route needs to authorise the call without another query:
its tenant and its effective permissions (already narrowed by a key's scopes or a share's
grant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.requests import HTTPConnection

from keel.core.errors import Unauthenticated

__all__ = ["PRINCIPAL_KEY", "Principal", "Via", "current_principal", "require_user"]

PRINCIPAL_KEY = "keel.principal"

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
