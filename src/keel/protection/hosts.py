"""Which Host and Origin values this server answers for (the DNS-rebinding defence).

A browser tricked into resolving an attacker's name to 127.0.0.1 still sends the attacker's
name as Host; refusing unknown hosts keeps a local Keel from being driven by any web page.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from keel.core.config import LOOPBACK_NAMES, Config

__all__ = ["HostPolicy", "split_host"]

_VERDICT_CACHE_SIZE = 256
_WILDCARD_BINDS = ("0.0.0.0", "::", "[::]", "")  # noqa: S104 - names, not a bind


def split_host(value: str) -> str:
    """The lower-cased host name of a Host header value, without its port."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end != -1 else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


class HostPolicy:
    """Exact names and `*.suffix` patterns accepted in the Host header."""

    def __init__(self, names: Iterable[str]) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        self.allow_any = False
        for raw in names:
            name = raw.strip().lower()
            if name == "*":
                self.allow_any = True
            elif name.startswith("*."):
                suffixes.append(name[1:])
            elif name:
                exact.add(split_host(name) if ":" in name and not name.startswith("[") else name)
        self.exact = frozenset(exact)
        self.suffixes = tuple(suffixes)
        # A server sees few distinct Host values; remembering verdicts spares a parse per request.
        self._verdicts: dict[str, bool] = {}

    @classmethod
    def from_config(cls, config: Config) -> HostPolicy:
        """Localhost names, the bind address, the public URL's host, then `allowed_hosts`."""
        names = [*LOOPBACK_NAMES, *config.allowed_hosts]
        if config.host not in _WILDCARD_BINDS:
            names.append(config.host if ":" not in config.host else f"[{config.host.strip('[]')}]")
        if config.public_url:
            host = urlsplit(config.public_url).hostname
            if host:
                names.append(host)
        return cls(names)

    def allows(self, host_header: str | None) -> bool:
        """Whether a request with this Host header is answered."""
        if self.allow_any:
            return True
        if not host_header:
            return False
        known = self._verdicts.get(host_header)
        if known is not None:
            return known
        host = split_host(host_header)
        verdict = host in self.exact or any(host.endswith(s) for s in self.suffixes)
        if len(self._verdicts) >= _VERDICT_CACHE_SIZE:
            self._verdicts.clear()  # attacker-chosen Hosts cannot grow it without bound
        self._verdicts[host_header] = verdict
        return verdict
