"""How a Keel module plugs into the kernel: routers, middleware, CLI, checks and hooks.

Modules are declared once, at import, and the kernel assembles them in dependency order; a
module never reaches into another module's registration.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

if TYPE_CHECKING:
    import typer

    from keel.app import Keel

__all__ = ["Hook", "KeelModule", "LandingLink", "MiddlewareSpec", "Slot"]

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
    readiness: Mapping[str, Callable[[Keel], Callable[[], Awaitable[None]]]] = field(
        default_factory=dict
    )
    on_startup: Sequence[Hook] = ()
    on_shutdown: Sequence[Hook] = ()
    cli: Callable[[], typer.Typer] | None = None
    landing_links: Sequence[LandingLink] = ()
