"""The guard: the checks every request passes before any application code runs.

In order: forwarded headers (trusted proxies only) → HTTPS redirect → Host allowlist → CORS
preflight → Origin check on unsafe methods → body size and JSON depth limits. Security headers
(and CORS headers for allowed origins) are added to every response, rejections included.
Rejections are problem+json, rendered by `keel.core.errors`, and reach no route.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from keel.core.config import Config
from keel.core.context import response_record
from keel.core.errors import InvalidHost, OriginRejected, PayloadTooLarge, problem_response
from keel.protection.cors import CorsPolicy
from keel.protection.headers import security_headers
from keel.protection.hosts import HostPolicy
from keel.protection.limits import LimitedReceive
from keel.protection.proxy import TrustedProxies

__all__ = ["GuardMiddleware"]

_READ_HEADERS = frozenset(
    {
        b"host",
        b"origin",
        b"content-type",
        b"content-length",
        b"access-control-request-method",
        b"access-control-request-headers",
    }
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Probes and scrapers talk to the process directly, often over plain http inside the network.
REDIRECT_EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
# Orchestrators probe by pod IP, a Host no allowlist names; these answers reveal nothing a
# rebinding page could use (no data, no state change), so they skip the Host check.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class GuardMiddleware:
    """Host/Origin guard, CORS, body limits, HTTPS redirect and security headers."""

    def __init__(self, app: ASGIApp, *, config: Config) -> None:
        self.app = app
        self.config = config
        self.proxies = TrustedProxies(
            config.trusted_proxies, trust_host=config.trust_forwarded_host
        )
        self.hosts = HostPolicy.from_config(config)
        self.cors = CorsPolicy(config.cors_origins, allow_credentials=config.cors_allow_credentials)
        self.headers = security_headers(config)
        self.https = config.is_https
        self.public_origin = (
            f"{urlsplit(config.public_url).scheme}://{urlsplit(config.public_url).netloc}".lower()
            if config.public_url
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.proxies:
            self.proxies.apply(scope)
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _READ_HEADERS and name not in headers:  # the first of duplicates counts
                headers[name] = value.decode("latin-1")
        origin = headers.get(b"origin")
        record, send = response_record(scope, send)
        # Security and CORS headers go on every response unless the route set its own;
        # `vary` is always added (values of several `vary` headers combine).
        if origin and self.cors.allows(origin):
            cors = self.cors.response_headers(origin)
            record.defaults = [*self.headers, *(item for item in cors if item[0] != b"vary")]
            record.headers.extend(item for item in cors if item[0] == b"vary")
        else:
            record.defaults = self.headers

        rejection = self._check(scope, headers, origin)
        if rejection is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await rejection(scope, receive, send)
            return
        if scope["type"] == "http":
            # Every method: a GET may carry a chunked body too. FastAPI parses a body without
            # a Content-Type as JSON, so such a body is depth-checked as well.
            content_type = headers.get(b"content-type")
            receive = LimitedReceive(
                receive,
                limit=self.config.max_body_bytes,
                json_depth=self.config.max_json_depth
                if content_type is None or _is_json(content_type)
                else None,
            )
        await self.app(scope, receive, send)

    def _check(
        self, scope: Scope, headers: dict[bytes, str], origin: str | None
    ) -> Response | None:
        """The response that rejects this request, or None to let it through."""
        if self._needs_https(scope):
            # raw_path keeps percent-encoding: a decoded `%3F` would turn path into query.
            path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
            query = scope.get("query_string", b"").decode("latin-1")
            target = f"{self.config.public_url}{path}" + (f"?{query}" if query else "")
            return RedirectResponse(target, status_code=308)
        if scope["path"] not in PROBE_PATHS and not self.hosts.allows(headers.get(b"host")):
            return problem_response(
                InvalidHost(hint="add the name to KEEL_ALLOWED_HOSTS if this server should use it")
            )
        method = scope.get("method", "GET")
        if origin and method == "OPTIONS" and b"access-control-request-method" in headers:
            return self._preflight(origin, headers)
        unsafe = method not in SAFE_METHODS or scope["type"] == "websocket"
        if origin is not None and unsafe and not self._origin_allowed(origin, scope, headers):
            return problem_response(OriginRejected())
        if self._declared_too_large(headers.get(b"content-length")):
            return problem_response(
                PayloadTooLarge(
                    f"The request body exceeds {self.config.max_body_bytes} bytes.",
                    hint="raise KEEL_MAX_BODY_BYTES if larger bodies are expected",
                )
            )
        return None

    def _needs_https(self, scope: Scope) -> bool:
        return (
            self.https
            and scope["scheme"] in ("http", "ws")
            and scope["path"] not in REDIRECT_EXEMPT
        )

    def _preflight(self, origin: str, headers: dict[bytes, str]) -> Response:
        if not self.cors.allows(origin):
            return problem_response(OriginRejected())
        granted = self.cors.preflight_headers(
            origin, headers.get(b"access-control-request-headers")
        )
        return Response(status_code=204, headers={k.decode(): v.decode() for k, v in granted})

    def _declared_too_large(self, length: str | None) -> bool:
        if length is None:
            return False
        try:
            return int(length) > self.config.max_body_bytes
        except ValueError:
            return False

    def _origin_allowed(self, origin: str, scope: Scope, headers: dict[bytes, str]) -> bool:
        origin = origin.lower().rstrip("/")
        if origin == "null":
            return False
        if self.cors.allows(origin) or origin == self.public_origin:
            return True
        scheme = "https" if scope["scheme"] in ("https", "wss") else "http"
        host = (headers.get(b"host") or "").lower()
        return bool(host) and origin == f"{scheme}://{host}"
