"""Security headers sent on every response (a route may set its own value to override one)."""

from __future__ import annotations

from keel.core.config import Config

__all__ = ["CONTENT_SECURITY_POLICY", "security_headers"]

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)


def security_headers(config: Config) -> list[tuple[bytes, bytes]]:
    """The headers for `config`: CSP without unsafe-inline, no sniffing, no framing, HSTS.

    Framing is refused by CSP `frame-ancestors 'none'`, which every current browser honours;
    the legacy `X-Frame-Options` would only repeat it on every response.
    """
    headers = {
        "content-security-policy": CONTENT_SECURITY_POLICY,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cross-origin-opener-policy": "same-origin",
    }
    if config.is_https:
        headers["strict-transport-security"] = "max-age=31536000"
    return [(name.encode(), value.encode()) for name, value in headers.items()]
