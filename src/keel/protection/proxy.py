"""Honour `X-Forwarded-*` headers, but only when the direct peer is a trusted proxy.

Without this, anyone could claim any client address or scheme by sending the headers
themselves; with it, rate limits, logs and HTTPS redirects see the real client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

__all__ = ["TrustedProxies"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("["):  # [v6]:port
        value = value[1 : value.find("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


class TrustedProxies:
    """The set of networks whose forwarded headers are believed."""

    def __init__(self, networks: Iterable[str], *, trust_host: bool = False) -> None:
        self.networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(item, strict=False) for item in networks
        )
        self.trust_host = trust_host

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str | None) -> bool:
        """Whether `host` (an IP address string) is inside a trusted network."""
        if host is None:
            return False
        address = _address(host)
        return address is not None and any(address in network for network in self.networks)

    def apply(self, scope: Scope) -> None:
        """Rewrite `scope`'s client, scheme and Host from forwarded headers, if trusted."""
        client = scope.get("client")
        if not client or not self.trusts(client[0]):
            return
        forwarded = {
            name: value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
        }
        if b"x-forwarded-for" in forwarded:
            real_client = self._client_from(forwarded[b"x-forwarded-for"])
            if real_client is not None:
                scope["client"] = (real_client, 0)
        if b"x-forwarded-proto" in forwarded:
            scheme = forwarded[b"x-forwarded-proto"].split(",")[-1].strip().lower()
            if scheme in ("http", "https"):
                if scope["type"] == "websocket":
                    scheme = "wss" if scheme == "https" else "ws"
                scope["scheme"] = scheme
        if self.trust_host and b"x-forwarded-host" in forwarded:
            host = forwarded[b"x-forwarded-host"].split(",")[-1].strip().encode("latin-1")
            scope["headers"] = [
                *((n, v) for n, v in scope["headers"] if n != b"host"),
                (b"host", host),
            ]

    def _client_from(self, forwarded_for: str) -> str | None:
        # The right-most address that is not one of our proxies is the real client; anything
        # left of it was written by the client itself and cannot be believed.
        for hop in reversed([hop for hop in forwarded_for.split(",") if hop.strip()]):
            address = _address(hop)
            if address is None:
                return None
            if not self.trusts(str(address)):
                return str(address)
        return None
