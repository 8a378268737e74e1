"""Who is acting, bound per request (by the identity middleware) or per command (CLI)."""

from __future__ import annotations

import getpass
from collections.abc import Iterable, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from keel.core.principal import Principal

__all__ = ["Actor", "RequestActor", "bind_actor", "current_actor", "reset_actor", "system_actor"]


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


class RequestActor:
    """A request's actor, built only if something records an event (most requests do not).

    The identity middleware binds one per request; `current_actor()` builds the `Actor` from
    the principal, address and user agent on first use.
    """

    __slots__ = ("_actor", "_client", "_headers", "_principal")

    def __init__(
        self,
        principal: Principal | None,
        client: Sequence[Any] | None,
        headers: Iterable[tuple[bytes, bytes]],
    ) -> None:
        self._principal = principal
        self._client = client
        self._headers = headers
        self._actor: Actor | None = None

    def get(self) -> Actor:
        """The actor, built once."""
        if self._actor is None:
            agent = next(
                (bytes(v).decode("latin-1") for k, v in self._headers if k == b"user-agent"),
                None,
            )
            self._actor = Actor.of(
                self._principal,
                client_ip=str(self._client[0]) if self._client else None,
                user_agent=agent,
            )
        return self._actor


_actor: ContextVar[Actor | RequestActor | None] = ContextVar("keel_audit_actor", default=None)


def current_actor() -> Actor | None:
    """The bound actor, if any."""
    bound = _actor.get()
    return bound.get() if isinstance(bound, RequestActor) else bound


def bind_actor(actor: Actor | RequestActor) -> Token[Actor | RequestActor | None]:
    """Make `actor` current for audit events; returns a token for `reset_actor`."""
    return _actor.set(actor)


def reset_actor(token: Token[Actor | RequestActor | None]) -> None:
    """Restore the actor bound before `bind_actor` returned `token`."""
    _actor.reset(token)


def system_actor(what: str) -> Actor:
    """The actor for system work: `system:cli` with the OS user, or a job."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        user = "unknown"
    return Actor("system", f"system:{what}", f"{what} ({user})")
