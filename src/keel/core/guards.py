"""Route guard markers: every route must say who may call it.

A route carries either a guard dependency (identity's `require(…)`, `require_user`) or the
explicit `public` marker; a test walks every route of the assembled app and fails on a route
with neither. The registry lives in the core so that modules left of identity (health,
metrics, the landing page) can mark their routes public.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["guard_kind", "public", "register_guard"]

_GUARDS: dict[Callable[..., Any], str] = {}


def register_guard(dependency: Callable[..., Any], kind: str) -> None:
    """Record `dependency` as a guard checking `kind` (a permission, "public", …)."""
    _GUARDS[dependency] = kind


def guard_kind(dependency: Callable[..., Any]) -> str | None:
    """What a guard dependency checks, or None if it is not one."""
    return _GUARDS.get(dependency)


async def public() -> None:
    """Dependency marker for a route anyone may call: `dependencies=[Depends(public)]`.

    Async on purpose: FastAPI runs a plain function dependency in a worker thread."""


register_guard(public, "public")
