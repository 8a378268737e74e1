"""Who is calling: the principal the identity middleware resolved for this request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.requests import HTTPConnection

from keel.core.errors import Unauthenticated

__all__ = ["PRINCIPAL_KEY", "Principal", "current_principal", "require_user"]

PRINCIPAL_KEY = "keel.principal"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    user_id: str
    email: str
    display_name: str
    via: Literal["session"]
    session_id: str | None = None
    csrf_token: str | None = None


def current_principal(connection: HTTPConnection) -> Principal | None:
    """The request's principal, or None for an anonymous request."""
    principal = connection.scope.get(PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else None


def require_user(connection: HTTPConnection) -> Principal:
    """FastAPI dependency: the signed-in caller, or 401."""
    principal = current_principal(connection)
    if principal is None:
        raise Unauthenticated("Sign in first.")
    return principal
