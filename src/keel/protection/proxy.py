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

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(item, strict=False) for item in networks
        )

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
        forwarded_for = proto = host = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded_for = value.decode("latin-1")
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1")
            elif name == b"x-forwarded-host":
                host = value.decode("latin-1")
        if forwarded_for:
            # The right-most address that is not one of our proxies is the real client.
            hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
            for hop in reversed(hops):
                address = _address(hop)
                if address is None:
                    break
                if not self.trusts(str(address)):
                    scope["client"] = (str(address), 0)
                    break
        if proto:
            scheme = proto.split(",")[-1].strip().lower()
            if scheme in ("http", "https"):
                if scope["type"] == "websocket":
                    scheme = "wss" if scheme == "https" else "ws"
                scope["scheme"] = scheme
        if host:
            value = host.split(",")[-1].strip().encode("latin-1")
            scope["headers"] = [
                *((n, v) for n, v in scope["headers"] if n != b"host"),
                (b"host", value),
            ]
