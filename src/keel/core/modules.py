"""How a Keel module plugs into the kernel: routers, middleware, CLI, checks, hooks, migrations.

Keel's own modules are listed by the kernel in their dependency order (DESIGN.md); other
packages add theirs through the `keel.modules` entry-point group. Middleware is placed by slot,
whatever the module order. A module never reaches into another module's registration.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

if TYPE_CHECKING:
    import typer

    from keel.app import Keel

__all__ = [
    "ENTRY_POINT_GROUP",
    "Hook",
    "KeelModule",
    "LandingLink",
    "MiddlewareSpec",
    "PermissionSpec",
    "Slot",
    "discover_modules",
    "migration_locations",
]

Hook = Callable[["Keel"], Awaitable[None]]
"""A startup or shutdown hook; receives the running kernel."""


class Slot:
    """Positions in the middleware chain, outermost first (DESIGN.md's request path)."""

    TRACE = 100
    GUARD = 200
    ERRORS = 300
    METRICS = 400
    IDENTITY = 500
    RATE_LIMIT = 600
    CSRF = 700


@dataclass(frozen=True, slots=True)
class MiddlewareSpec:
    """A pure-ASGI middleware class, its options, and its slot in the chain."""

    slot: int
    factory: type[Any]
    options: Callable[[Keel], Mapping[str, Any]] = lambda _keel: {}


@dataclass(frozen=True, slots=True)
class PermissionSpec:
    """A permission a module owns (`resource:verb`), and the built-in roles holding it.

    `owner` holds every permission whatever this says; `roles` names which of `admin`,
    `operator` and `viewer` hold it by default.
    """

    name: str
    description: str
    roles: tuple[str, ...] = ("admin",)


@dataclass(frozen=True, slots=True)
class LandingLink:
    """A link the landing page shows (e.g. the console, the status page)."""

    title: str
    href: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class KeelModule:
    """What one module contributes to the kernel."""

    name: str
    routers: Sequence[Callable[[Keel], APIRouter]] = ()
    middleware: Sequence[MiddlewareSpec] = ()
    readiness: Mapping[str, Callable[[Keel], Callable[[], Awaitable[str | None]]]] = field(
        default_factory=dict
    )
    on_startup: Sequence[Hook] = ()
    on_shutdown: Sequence[Hook] = ()
    cli: Callable[[], typer.Typer] | None = None
    cli_name: str | None = None
    """The command group's name (`keel <cli_name> …`); default: the module's name."""
    more_cli: Sequence[tuple[str, Callable[[], typer.Typer]]] = ()
    """Further command groups, as (name, factory)."""
    landing_links: Sequence[LandingLink] = ()
    permissions: Sequence[PermissionSpec] = ()
    migrations: Path | None = None
    """A directory of Alembic revisions on the module's own branch (`branch_labels`)."""


ENTRY_POINT_GROUP = "keel.modules"


def discover_modules() -> list[KeelModule]:
    """Modules other packages declare under the `keel.modules` entry-point group.

    An entry point names a `KeelModule` or a callable returning one; they load by name order.
    """
    from keel.core.errors import StartupError

    found: list[KeelModule] = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            target = entry.load()
            module = target if isinstance(target, KeelModule) else target()
        except Exception as exc:
            raise StartupError(
                f"the Keel module {entry.name!r} ({entry.value}) failed to load: {exc}",
                hint="fix or uninstall the package that declares it",
            ) from exc
        if not isinstance(module, KeelModule):
            raise StartupError(
                f"the entry point {entry.name!r} ({entry.value}) is not a KeelModule",
                hint="it must name a KeelModule or a function returning one",
            )
        found.append(module)
    return found


def migration_locations(modules: Sequence[KeelModule]) -> tuple[Path, ...]:
    """The migration directories `modules` ship, in module order."""
    return tuple(module.migrations for module in modules if module.migrations is not None)
