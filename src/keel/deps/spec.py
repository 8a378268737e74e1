"""Declaring a dependency: where it is, how long to wait, when to retry, when to stop calling,
how many calls at once, how to probe it, and how it appears on the public status page."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from keel.core.config import DependencySettings

__all__ = [
    "Breaker",
    "Bulkhead",
    "Dependency",
    "Probe",
    "Public",
    "Retry",
    "Timeouts",
    "apply_configuration",
    "declare",
    "declared",
    "dependency",
    "forget",
    "public_of",
    "settings_for",
    "settings_key",
    "use_settings",
]

_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
_PROBE_PATH = re.compile(r"(/|https?://)\S*")


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
        if not _PROBE_PATH.fullmatch(self.path):
            raise ValueError(
                f"Probe.path must start with / or be an http(s) URL (got {self.path!r})"
            )
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
"""Each dependency as it is in effect: code's declaration with the deployment's settings."""
_CODE: dict[str, Dependency] = {}
"""Each dependency as code declared it (the settings are applied on top, again when they change)."""
_FROM_SETTINGS: set[str] = set()
"""Dependencies only the settings declare."""
_SETTINGS: Mapping[str, DependencySettings] | None = None
"""The deployment's `deps` settings once a kernel applied its configuration; until then each
declaration reads its own `KEEL_DEPS__<NAME>__…` variables."""


OWN_KEYS = frozenset({"keel_api", "keel_database", "keel_workers"})
"""Settings keys of Keel's own components (`keel.api`, `keel.database`, `keel.workers`)."""
OWN_FIELDS = frozenset({"public", "public_name", "sla_target", "sla_window_days"})


def settings_key(name: str) -> str:
    """The configuration key of a dependency or component (`image-gen` → `image_gen`)."""
    return re.sub(r"[^a-z0-9]", "_", name.lower())


def _environment_settings(name: str) -> DependencySettings | None:
    """`KEEL_DEPS__<NAME>__<FIELD>[__<FIELD>]` variables of one dependency, validated."""
    prefix = f"KEEL_DEPS__{settings_key(name).upper()}__"
    data: dict[str, Any] = {}
    for variable, value in os.environ.items():
        if not variable.upper().startswith(prefix):
            continue
        *groups, last = variable[len(prefix) :].lower().split("__")
        node = data
        for group in groups:
            node = node.setdefault(group, {})
            if not isinstance(node, dict):
                raise ValueError(f"{variable} conflicts with another KEEL_DEPS variable")
        node[last] = value
    if not data:
        return None
    try:
        return DependencySettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "__".join(str(part).upper() for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"{prefix}{where}: {message}") from None


def settings_for(name: str) -> DependencySettings | None:
    """The deployment's settings of `name`, if any."""
    if _SETTINGS is None:
        return _environment_settings(name)
    return _SETTINGS.get(settings_key(name))


def _merged(current: Any, group: Any) -> Any:
    if group is None:
        return current
    changes = group.model_dump(exclude_none=True)
    return replace(current, **changes) if changes else current


def public_of(
    current: Public | None, settings: DependencySettings | None, default_name: str
) -> Public | None:
    """How a component shows on the status page once `settings` apply to `current`."""
    if settings is None:
        return current
    shown = (
        settings.public
        if settings.public is not None
        else current is not None or settings.public_name is not None
    )
    if not shown:
        return None
    base = current or Public(default_name)
    return Public(
        settings.public_name or base.name,
        target=settings.sla_target if settings.sla_target is not None else base.target,
        window_days=settings.sla_window_days or base.window_days,
    )


def _apply(dep: Dependency, settings: DependencySettings | None) -> Dependency:
    """`dep` with the deployment's `settings` applied (ValueError naming the field)."""
    if settings is None:
        return dep
    where = f"deps.{settings_key(dep.name)}"
    try:
        probe = dep.probe
        if settings.probe is not None:
            probe = _merged(probe or Probe(), settings.probe)
        changed = replace(
            dep,
            base_url=(settings.base_url or dep.base_url).rstrip("/"),
            probe_every=settings.probe_every or dep.probe_every,
            timeouts=_merged(dep.timeouts, settings.timeouts),
            retry=_merged(dep.retry, settings.retry),
            breaker=_merged(dep.breaker, settings.breaker),
            concurrency=_merged(dep.concurrency, settings.concurrency),
            probe=probe,
            public=public_of(dep.public, settings, dep.name),
        )
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not changed.base_url.startswith(("http://", "https://")):
        raise ValueError(f"{where}.base_url must start with http:// or https://")
    return changed


def use_settings(settings: Mapping[str, DependencySettings] | None) -> None:
    """Apply a deployment's `deps` settings to every declaration, now and later (None: back
    to each declaration's own environment variables). Names only the settings know are
    declared when they give a base URL. Raises ValueError naming the first bad field."""
    global _SETTINGS  # noqa: PLW0603 - one deployment configuration per process
    previous = _SETTINGS
    _SETTINGS = None if settings is None else dict(settings)
    try:
        effective = {name: _apply(dep, settings_for(name)) for name, dep in _CODE.items()}
        known = {settings_key(name) for name in _CODE}
        extra = {}
        for key, found in (_SETTINGS or {}).items():
            if key in OWN_KEYS:
                extra_fields = found.model_fields_set - OWN_FIELDS
                if extra_fields:
                    raise ValueError(
                        f"deps.{key}.{sorted(extra_fields)[0]}: Keel's own components take only"
                        f" {', '.join(sorted(OWN_FIELDS))}"
                    )
                continue
            if key.startswith("keel_"):
                raise ValueError(
                    f"deps.{key}: Keel's own components are {', '.join(sorted(OWN_KEYS))}"
                )
            if key in known:
                continue
            if found.base_url is None:
                raise ValueError(
                    f"deps.{key}: no dependency {key!r} is declared in code, so it needs a base_url"
                )
            extra[key] = _apply(Dependency(name=key, base_url=found.base_url), found)
    except ValueError:
        _SETTINGS = previous
        raise
    for name in _FROM_SETTINGS - set(extra):
        _DECLARED.pop(name, None)
    _FROM_SETTINGS.clear()
    _FROM_SETTINGS.update(extra)
    _DECLARED.update(effective)
    _DECLARED.update(extra)


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
    if settings_key(name).startswith("keel_"):
        raise ValueError(
            f"dependency name {name!r} is reserved: names starting with 'keel.' or 'keel_'"
            " are Keel's own components"
        )
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url of {name!r} must start with http:// or https://")
    if not probe_every >= 1:
        raise ValueError(f"probe_every of {name!r} must be at least 1 second")
    code = Dependency(
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
    dep = _apply(code, settings_for(name))
    _CODE[name] = code
    key = settings_key(name)
    if key in _FROM_SETTINGS:  # the settings declared it under its key (`image_gen`)
        _FROM_SETTINGS.discard(key)
        _DECLARED.pop(key, None)
    _DECLARED[name] = dep
    return dep


def dependency(name: str) -> Dependency:
    """The declared dependency `name` (LookupError with the known names if there is none).
    One only the settings declare answers to its key and to any name with that key
    (`image_gen` and `image-gen`)."""
    try:
        return _DECLARED[name]
    except KeyError:
        key = settings_key(name)
        if key in _FROM_SETTINGS:
            return _DECLARED[key]
        known = ", ".join(sorted(_DECLARED)) or "none"
        raise LookupError(f"no dependency {name!r} is declared (declared: {known})") from None


def declared() -> dict[str, Dependency]:
    """Every declared dependency by name."""
    return dict(_DECLARED)


def forget(name: str) -> None:
    """Remove a declaration (tests)."""
    _DECLARED.pop(name, None)
    _CODE.pop(name, None)
    _FROM_SETTINGS.discard(name)


def apply_configuration(settings: Mapping[str, DependencySettings]) -> None:
    """`use_settings` for a starting kernel or command: a bad setting is a StartupError
    (one line naming the field, with a hint)."""
    from keel.core.errors import StartupError

    try:
        use_settings(settings)
    except ValueError as exc:
        raise StartupError(
            f"invalid configuration: {exc}",
            hint="check the KEEL_DEPS__… variables (or the [deps] tables in keel.toml)",
        ) from None
