"""Who is acting, bound per request (by the identity middleware) or per command (CLI)."""

from __future__ import annotations

import getpass
from contextvars import ContextVar, Token
from dataclasses import dataclass

from keel.core.principal import Principal

__all__ = ["Actor", "bind_actor", "current_actor", "reset_actor", "system_actor"]


@dataclass(frozen=True, slots=True)
class Actor:
    """The actor of audit events, and where its request came from."""

    type: str  # user | api_key | share | system
    id: str | None
    label: str = ""
    tenant_id: str | None = None
    origin: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None

    @classmethod
    def of(
        cls,
        principal: Principal | None,
        *,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> Actor:
        """The actor for a request's principal (None: anonymous)."""
        if principal is None:
            return cls("anonymous", None, "", None, None, client_ip, user_agent)
        if principal.via == "api_key":
            kind, ident = "api_key", principal.api_key_id
        elif principal.via == "share":
            kind, ident = "share", principal.share_id
        else:
            kind, ident = "user", principal.user_id
        origin = f"user:{principal.user_id}" if kind != "user" and principal.user_id else None
        return cls(
            kind,
            ident,
            principal.email or principal.display_name,
            principal.tenant_id,
            origin,
            client_ip,
            (user_agent or "")[:300] or None,
        )


_actor: ContextVar[Actor | None] = ContextVar("keel_audit_actor", default=None)


def current_actor() -> Actor | None:
    """The bound actor, if any."""
    return _actor.get()


def bind_actor(actor: Actor) -> Token[Actor | None]:
    """Make `actor` current for audit events; returns a token for `reset_actor`."""
    return _actor.set(actor)


def reset_actor(token: Token[Actor | None]) -> None:
    """Restore the actor bound before `bind_actor` returned `token`."""
    _actor.reset(token)


def system_actor(what: str) -> Actor:
    """The actor for system work: `system:cli` with the OS user, or a job."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        user = "unknown"
    return Actor("system", f"system:{what}", f"{what} ({user})")
