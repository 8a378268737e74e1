"""Identity and CSRF middleware (pure ASGI).

Identity resolves a bearer access token, an API key, a share link or the session cookie into
a `Principal` (nothing presented: anonymous). CSRF then requires, on every unsafe request
authenticated by the cookie, an `X-CSRF-Token` header equal to the session's token: a page on
another site can make the browser send the cookie, but cannot read the token to send with it.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from keel.audit.context import RequestActor, bind_actor, reset_actor
from keel.core.database import Database
from keel.core.errors import Forbidden
from keel.core.principal import SHARE_SPEND_KEY
from keel.identity.access import user_permissions
from keel.identity.principal import PRINCIPAL_KEY, Principal
from keel.identity.sessions import needs_touch, resolve_session, touch_session
from keel.identity.shares import find_share, spend_share
from keel.identity.tokens import InvalidToken

if TYPE_CHECKING:
    from keel.identity.runtime import IdentityRuntime

__all__ = ["CsrfFailed", "CsrfMiddleware", "IdentityMiddleware", "session_cookie_name"]

PRINCIPAL_CACHE_SIZE = 10_000
AUTH_ERROR_KEY = "keel.auth_error"
"""Where identity leaves a presented-but-invalid credential's error for the CSRF middleware."""
API_KEY_START = "keel_"
"""A bearer credential starting with this is an API key, not a JWT (those start `ey`)."""
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
    return _cookie_value(raw, cookie_name) if raw else None


def _cookie_value(raw: str, cookie_name: str) -> str | None:
    if cookie_name not in raw:
        return None
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(raw)
    except Exception:  # noqa: BLE001 - a malformed Cookie header is simply no session
        return None
    morsel = cookies.get(cookie_name)
    value = str(morsel.value) if morsel is not None else ""
    return value or None


def _share_param(query_string: bytes) -> bytes | None:
    values = parse_qs(query_string.decode("latin-1")).get("share")
    return values[0].encode("latin-1") if values and values[0] else None


class IdentityMiddleware:
    """Resolve the caller: bearer token or API key, share link, else the session cookie.

    A credential that is presented but invalid is a 401 (the client should know); a stale
    session cookie is simply anonymous (the browser may hold an old one).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        runtime: IdentityRuntime,
        db: Database,
        https: bool,
        idle_minutes: int,
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.db = db
        self.cookie_name = session_cookie_name(https)
        self.idle = timedelta(minutes=idle_minutes)
        self._principals: OrderedDict[str, Principal] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._resolve(scope)
        except InvalidToken as exc:
            # Raised after the rate limiter (by the CSRF middleware), so a flood of bad
            # credentials is counted against its address like any anonymous traffic.
            scope[AUTH_ERROR_KEY] = exc
            principal = None
        if principal is not None:
            scope[PRINCIPAL_KEY] = principal
        # Audit events recorded while handling this request name this actor and address.
        token = bind_actor(RequestActor(principal, scope.get("client"), scope["headers"]))
        try:
            await self.app(scope, receive, send)
        finally:
            reset_actor(token)

    async def _resolve(self, scope: Scope) -> Principal | None:
        authorization = api_key = share = cookie = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value
            elif key == b"x-api-key":
                api_key = value
            elif key == b"x-share-token":
                share = value
            elif key == b"cookie":
                cookie = value
        if authorization is not None:
            scheme, _, credential = bytes(authorization).decode("latin-1").partition(" ")
            # Other schemes (e.g. Basic from a proxy in front) are not Keel's to judge.
            if scheme.lower() == "bearer":
                return await self._bearer(credential.strip())
        if api_key is not None:
            return await self.runtime.api_keys.resolve(bytes(api_key).decode("latin-1").strip())
        if share is None and b"share=" in scope.get("query_string", b""):
            share = _share_param(scope["query_string"])
        if share is not None:
            return await self._share_principal(scope, share)
        if cookie is not None:
            token = _cookie_value(bytes(cookie).decode("latin-1"), self.cookie_name)
            if token is not None:
                return await self._session_principal(token)
        return None

    async def _bearer(self, credential: str) -> Principal:
        if not credential:
            raise InvalidToken("Send `Authorization: Bearer <token>`.")
        if credential.startswith(API_KEY_START):
            return await self.runtime.api_keys.resolve(credential)
        return await self._token_principal(credential)

    async def _share_principal(self, scope: Scope, header: bytes) -> Principal | None:
        token = bytes(header).decode("latin-1").strip()
        principal = await find_share(self.db, self.runtime.catalog, token)
        client = scope.get("client")
        db = self.db

        async def spend() -> None:
            # Called by `require(…, resource=…)` once the route matched the shared resource.
            await spend_share(
                db,
                principal,
                client_ip=client[0] if client else None,
                user_agent=_header(scope, b"user-agent"),
                method=scope["method"],
                path=scope["path"],
            )

        scope[SHARE_SPEND_KEY] = spend
        return principal

    async def _token_principal(self, token: str) -> Principal:
        claims = await self.runtime.verifier.verify(token)
        principal = self._principals.get(claims.jti)
        if principal is not None:
            return principal
        principal = Principal(
            user_id=claims.sub,
            via="token",
            permissions=claims.scope,
            tenant_id=claims.tid,
            token_id=claims.jti,
            token_family=claims.sid,
        )
        # Built once per token (the verifier has checked expiry and revocation already).
        if len(self._principals) >= PRINCIPAL_CACHE_SIZE:
            self._principals.popitem(last=False)
        self._principals[claims.jti] = principal
        return principal

    async def _session_principal(self, token: str) -> Principal | None:
        now = datetime.now(UTC)
        async with self.db.session() as session:
            found = await resolve_session(session, token, idle=self.idle, now=now)
            if found is None:
                return None
            row, user = found
            permissions = await user_permissions(session, self.runtime.catalog, user)
        if needs_touch(row, now=now):
            async with self.db.transaction() as session:
                await touch_session(session, row.id, now=now)
        return Principal(
            user_id=user.id,
            via="session",
            permissions=permissions,
            tenant_id=user.tenant_id,
            email=user.email,
            display_name=user.display_name,
            session_id=row.id,
            csrf_token=row.csrf_token,
        )


class CsrfMiddleware:
    """Refuse cookie-authenticated unsafe requests without the session's CSRF token.

    It first raises the error of an invalid credential identity found: it sits after the rate
    limiter, so bad credentials are limited by address before they are refused."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and AUTH_ERROR_KEY in scope:
            raise scope[AUTH_ERROR_KEY]
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            principal = scope.get(PRINCIPAL_KEY)
            exempt = (scope["method"], scope["path"]) in CSRF_EXEMPT
            # Only the cookie rides along by itself; a bearer token or key is sent on purpose.
            if isinstance(principal, Principal) and principal.via == "session" and not exempt:
                sent = _header(scope, b"x-csrf-token") or ""
                expected = principal.csrf_token or ""
                if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
                    raise CsrfFailed()
        await self.app(scope, receive, send)
