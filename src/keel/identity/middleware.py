"""Identity and CSRF middleware (pure ASGI).

Identity resolves the session cookie into a `Principal` (nothing found: anonymous, never an
error). CSRF then requires, on every unsafe request authenticated by that cookie, an
`X-CSRF-Token` header equal to the session's token: a page on another site can make the
browser send the cookie, but cannot read the token to send with it.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie

from starlette.types import ASGIApp, Receive, Scope, Send

from keel.core.database import Database
from keel.core.errors import Forbidden
from keel.identity.principal import PRINCIPAL_KEY, Principal
from keel.identity.sessions import needs_touch, resolve_session, touch_session

__all__ = ["CsrfFailed", "CsrfMiddleware", "IdentityMiddleware", "session_cookie_name"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Signing in must work even when the browser still holds a stale or foreign session cookie.
CSRF_EXEMPT = frozenset({("POST", "/api/v1/auth/session")})


def session_cookie_name(https: bool) -> str:
    """`__Host-` prefixed when served over https (the browser then pins it to this host)."""
    return "__Host-keel_session" if https else "keel_session"


class CsrfFailed(Forbidden):
    """The request lacks the CSRF token of its session (send it as X-CSRF-Token)."""

    slug = "csrf-failed"
    title = "CSRF Token Missing or Wrong"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def session_token(scope: Scope, cookie_name: str) -> str | None:
    """The session token the browser sent, if any."""
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(raw)
    except Exception:  # noqa: BLE001 - a malformed Cookie header is simply no session
        return None
    morsel = cookies.get(cookie_name)
    value = str(morsel.value) if morsel is not None else ""
    return value or None


class IdentityMiddleware:
    """Resolve the caller from the session cookie."""

    def __init__(self, app: ASGIApp, *, db: Database, https: bool, idle_minutes: int) -> None:
        self.app = app
        self.db = db
        self.cookie_name = session_cookie_name(https)
        self.idle = timedelta(minutes=idle_minutes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            token = session_token(scope, self.cookie_name)
            if token is not None:
                scope[PRINCIPAL_KEY] = await self._principal(token)
        await self.app(scope, receive, send)

    async def _principal(self, token: str) -> Principal | None:
        now = datetime.now(UTC)
        async with self.db.session() as session:
            found = await resolve_session(session, token, idle=self.idle, now=now)
        if found is None:
            return None
        row, user = found
        if needs_touch(row, now=now):
            async with self.db.transaction() as session:
                await touch_session(session, row.id, now=now)
        return Principal(
            user_id=user.id,
            email=user.email,
            display_name=user.display_name,
            via="session",
            session_id=row.id,
            csrf_token=row.csrf_token,
        )


class CsrfMiddleware:
    """Refuse cookie-authenticated unsafe requests without the session's CSRF token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            principal = scope.get(PRINCIPAL_KEY)
            exempt = (scope["method"], scope["path"]) in CSRF_EXEMPT
            if isinstance(principal, Principal) and not exempt:
                sent = _header(scope, b"x-csrf-token") or ""
                expected = principal.csrf_token or ""
                if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
                    raise CsrfFailed()
        await self.app(scope, receive, send)
