"""CORS with an explicit allowlist only: never `*`, never a reflected arbitrary origin."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["CorsPolicy"]

ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
ALLOWED_REQUEST_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "authorization",
        "content-language",
        "content-type",
        "idempotency-key",
        "if-match",
        "if-none-match",
        "traceparent",
        "tracestate",
        "x-csrf-token",
        "x-request-id",
    }
)
EXPOSED_HEADERS = (
    "traceparent, x-request-id, retry-after, location, etag, "
    "ratelimit-limit, ratelimit-remaining, ratelimit-reset, ratelimit-policy"
)


class CorsPolicy:
    """The origins allowed to call this server from a browser, and what they may send."""

    def __init__(self, origins: Iterable[str], *, allow_credentials: bool) -> None:
        self.origins = frozenset(origin.lower() for origin in origins)
        self.allow_credentials = allow_credentials

    def allows(self, origin: str) -> bool:
        """Whether `origin` is on the allowlist."""
        return origin.lower() in self.origins

    def preflight_headers(self, origin: str, requested: str | None) -> list[tuple[bytes, bytes]]:
        """Headers answering a preflight from an allowed `origin`."""
        asked = [h.strip().lower() for h in (requested or "").split(",") if h.strip()]
        granted = ", ".join(h for h in asked if h in ALLOWED_REQUEST_HEADERS)
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
            (b"access-control-max-age", b"600"),
            (b"vary", b"Origin"),
        ]
        if granted:
            headers.append((b"access-control-allow-headers", granted.encode()))
        if self.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers

    def response_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        """Headers for an actual response to an allowed `origin`."""
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
            (b"vary", b"Origin"),
        ]
        if self.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers
