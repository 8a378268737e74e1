"""The deps module's registration: operators' API, the public status page, permissions and
the monitor that enqueues probes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from keel.core.modules import KeelModule, PermissionSpec

if TYPE_CHECKING:
    from keel.app import Keel
    from keel.core.config import Config

__all__ = ["DEPS_PERMISSIONS", "deps_module"]

DEPS_PERMISSIONS = (
    PermissionSpec(
        "dependencies:read", "See dependencies, incidents and maintenance", ("admin", "operator")
    ),
    PermissionSpec("incidents:write", "Open and update incidents, plan maintenance", ("admin",)),
)


async def _start(keel: Keel) -> None:
    from keel.deps.client import configure
    from keel.deps.monitor import NOT_COUNTED, ApiReporter, Monitor
    from keel.deps.spec import apply_configuration
    from keel.observability.health import run_checks

    apply_configuration(keel.config.deps)
    await configure(redis=keel.redis, registry=keel.metrics_registry)

    async def ready() -> bool:
        results = await run_checks(keel.readiness_checks(), timeout=3.0)
        return all(result.ok for result in results.values())

    api = ApiReporter(lambda: keel.http_metrics.answered(skip=NOT_COUNTED), ready)
    stop = asyncio.Event()
    keel.state["deps.stop"] = stop
    keel.state["deps.monitor"] = asyncio.create_task(
        Monitor(keel.db, api=api).run(stop), name="keel-deps-monitor"
    )


async def _stop(keel: Keel) -> None:
    from keel.deps.client import runtime

    task = keel.state.pop("deps.monitor", None)
    stop = keel.state.pop("deps.stop", None)
    if task is not None and stop is not None:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=5)
    await runtime().close()
    # The settings stay applied: shutdown hooks run in reverse module order, so the jobs
    # module's in-process worker may still be draining jobs that call dependencies.


def _configure(config: Config) -> None:
    from keel.deps.spec import apply_configuration

    apply_configuration(config.deps)


def deps_module() -> KeelModule:
    """Deps' contributions: `/api/v1/dependencies`, incidents, maintenance and `/status`; every
    command (`keel worker` too) applies the `deps` configuration when it loads it."""
    import keel.deps.monitor  # noqa: F401 - declares the deps settings
    from keel.core.clitools import on_config
    from keel.deps.api import dependencies_router
    from keel.deps.cli import deps_cli
    from keel.deps.status import status_router

    on_config("deps", _configure)

    return KeelModule(
        name="deps",
        routers=(dependencies_router, lambda keel: status_router(lambda: keel.db)),
        on_startup=(_start,),
        on_shutdown=(_stop,),
        permissions=DEPS_PERMISSIONS,
        cli=deps_cli,
    )
