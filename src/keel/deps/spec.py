"""Declaring a dependency: where it is, how long to wait, when to retry, when to stop calling,
how many calls at once, how to probe it, and how it appears on the public status page."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "Breaker",
    "Bulkhead",
    "Dependency",
    "Probe",
    "Public",
    "Retry",
    "Timeouts",
    "declare",
    "declared",
    "dependency",
    "forget",
]

_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,62}")


def _positive(owner: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ValueError(f"{owner}.{name} must be greater than 0 (got {value!r})")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to connect, to wait for each read, and for the whole call (its retries too)."""

    connect: float = 5.0
    read: float = 30.0
    total: float = 60.0

    def __post_init__(self) -> None:
        _positive("Timeouts", connect=self.connect, read=self.read, total=self.total)


@dataclass(frozen=True, slots=True)
class Retry:
    """Retries of idempotent calls: at most `attempts` tries within `budget` seconds, waiting a
    random time in [0, min(cap, base * 2^(n-1))] before try n+1 (full jitter)."""

    attempts: int = 3
    budget: float = 20.0
    base: float = 0.5
    cap: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Retry.attempts must be at least 1 (got {self.attempts!r})")
        _positive("Retry", budget=self.budget, base=self.base, cap=self.cap)


@dataclass(frozen=True, slots=True)
class Breaker:
    """Open after `failures` failed calls within `window` seconds; after `open_for` seconds
    let `half_open_calls` trial calls through: success closes, failure opens again."""

    failures: int = 5
    window: float = 30.0
    open_for: float = 15.0
    half_open_calls: int = 1

    def __post_init__(self) -> None:
        if self.failures < 1 or self.half_open_calls < 1:
            raise ValueError("Breaker.failures and Breaker.half_open_calls must be at least 1")
        _positive("Breaker", window=self.window, open_for=self.open_for)


@dataclass(frozen=True, slots=True)
class Bulkhead:
    """At most `limit` calls in flight per process; others wait up to `wait` seconds."""

    limit: int = 10
    wait: float = 1.0

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"Bulkhead.limit must be at least 1 (got {self.limit!r})")
        if self.wait < 0:
            raise ValueError(f"Bulkhead.wait must not be negative (got {self.wait!r})")


@dataclass(frozen=True, slots=True)
class Probe:
    """A health check: GET `path` (relative to the base URL, or absolute) must answer
    `status`, within `max_ms` when given, and with `json_field` = (key, value) when given;
    `failures` failed probes in a row open an incident, `recoveries` good ones close it."""

    path: str = "/"
    status: int = 200
    json_field: tuple[str, Any] | None = None
    max_ms: float | None = None
    failures: int = 3
    recoveries: int = 2

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"Probe.status must be an HTTP status (got {self.status!r})")
        if self.failures < 1 or self.recoveries < 1:
            raise ValueError("Probe.failures and Probe.recoveries must be at least 1")
        _positive("Probe", max_ms=self.max_ms)


@dataclass(frozen=True, slots=True)
class Public:
    """How the dependency appears on the public status page: a display name (never its URL)
    and its SLA (`target` percent over `window_days`)."""

    name: str
    target: float = 99.9
    window_days: int = 30

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("Public.name must not be empty")
        if not 0 < self.target <= 100:
            raise ValueError(f"Public.target must be in (0, 100] (got {self.target!r})")
        if self.window_days < 1:
            raise ValueError("Public.window_days must be at least 1")


@dataclass(frozen=True, slots=True)
class Dependency:
    """A declared dependency (see `declare`)."""

    name: str
    base_url: str
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: Retry = field(default_factory=Retry)
    breaker: Breaker = field(default_factory=Breaker)
    concurrency: Bulkhead = field(default_factory=Bulkhead)
    probe: Probe | None = None
    probe_every: float = 30.0
    public: Public | None = None


_DECLARED: dict[str, Dependency] = {}


def _env_overrides(dep: Dependency) -> Dependency:
    """`KEEL_DEPS__<NAME>__BASE_URL` and `…__PROBE_EVERY` override what code declared, so one
    build runs against each deployment's upstream."""
    prefix = "KEEL_DEPS__" + re.sub(r"[^A-Z0-9]", "_", dep.name.upper()) + "__"
    changes: dict[str, Any] = {}
    if base_url := os.environ.get(prefix + "BASE_URL"):
        changes["base_url"] = base_url
    if every := os.environ.get(prefix + "PROBE_EVERY"):
        try:
            changes["probe_every"] = float(every)
        except ValueError:
            raise ValueError(f"{prefix}PROBE_EVERY must be a number of seconds") from None
    return replace(dep, **changes) if changes else dep


def declare(
    name: str,
    *,
    base_url: str,
    timeouts: Timeouts | None = None,
    retry: Retry | None = None,
    breaker: Breaker | None = None,
    concurrency: Bulkhead | None = None,
    probe: Probe | None = None,
    probe_every: float = 30.0,
    public: Public | None = None,
) -> Dependency:
    """Declare (or redeclare) the dependency `name`; `keel.deps.http(name)` then calls it with
    all of this applied, and the monitor probes it when `probe` is given."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"dependency name {name!r} must be lowercase letters, digits, '_', '.' or '-'"
        )
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url of {name!r} must start with http:// or https://")
    if not probe_every >= 1:
        raise ValueError(f"probe_every of {name!r} must be at least 1 second")
    dep = _env_overrides(
        Dependency(
            name=name,
            base_url=base_url.rstrip("/"),
            timeouts=timeouts or Timeouts(),
            retry=retry or Retry(),
            breaker=breaker or Breaker(),
            concurrency=concurrency or Bulkhead(),
            probe=probe,
            probe_every=probe_every,
            public=public,
        )
    )
    _DECLARED[name] = dep
    return dep


def dependency(name: str) -> Dependency:
    """The declared dependency `name` (LookupError with the known names if there is none)."""
    try:
        return _DECLARED[name]
    except KeyError:
        known = ", ".join(sorted(_DECLARED)) or "none"
        raise LookupError(f"no dependency {name!r} is declared (declared: {known})") from None


def declared() -> dict[str, Dependency]:
    """Every declared dependency by name."""
    return dict(_DECLARED)


def forget(name: str) -> None:
    """Remove a declaration (tests)."""
    _DECLARED.pop(name, None)
