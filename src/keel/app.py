"""The kernel: assembles configuration, database, modules and middleware into an ASGI app.

`create_app()` builds Keel's own server; `install(app)` gives an existing FastAPI application
the same kernel (health, metrics, tracing, errors, protections) with one call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

from fastapi import APIRouter, Depends, FastAPI
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.routing import Mount

from keel._version import __version__
from keel.core.changes import ChangeWatcher
from keel.core.config import Config
from keel.core.database import Database
from keel.core.errors import (
    ErrorsMiddleware,
    Problem,
    install_exception_handlers,
    problem_responses,
)
from keel.core.guards import public
from keel.core.keyring import Keyring, load_master_key
from keel.core.migrate import migration_state, prepare
from keel.core.modules import (
    KeelModule,
    LandingLink,
    MiddlewareSpec,
    Slot,
    discover_modules,
    migration_locations,
)
from keel.core.process import connect_redis, ensure_instance
from keel.observability.health import CheckFailed, ReadinessCheck, health_router
from keel.observability.logging import configure_logging, get_logger
from keel.observability.metrics import (
    HttpMetrics,
    MetricsMiddleware,
    metrics_endpoint,
    new_registry,
)
from keel.observability.tracing import TraceMiddleware
from keel.protection.guard import GuardMiddleware

__all__ = ["API_PREFIX", "Keel", "create_app", "install"]

API_PREFIX = "/api/v1"

_logger = get_logger("keel")


def _core_module() -> KeelModule:
    return KeelModule(
        name="core",
        middleware=(
            MiddlewareSpec(
                Slot.TRACE, TraceMiddleware, lambda k: {"access_log": k.config.access_log}
            ),
            MiddlewareSpec(Slot.GUARD, GuardMiddleware, lambda k: {"config": k.config}),
            MiddlewareSpec(Slot.ERRORS, ErrorsMiddleware),
            MiddlewareSpec(Slot.METRICS, MetricsMiddleware, lambda k: {"metrics": k.http_metrics}),
        ),
    )


def builtin_modules() -> list[KeelModule]:
    """Keel's own modules after the core, in dependency order (DESIGN.md)."""
    from keel.audit.module import audit_module
    from keel.deps.module import deps_module
    from keel.identity.module import identity_module
    from keel.jobs.module import jobs_module
    from keel.protection.module import protection_module
    from keel.registry.module import registry_module
    from keel.settings.module import settings_module

    return [
        audit_module(),
        settings_module(),
        identity_module(),
        protection_module(),
        jobs_module(),
        deps_module(),
        registry_module(),
    ]


class Keel:
    """One running kernel: configuration, database, metrics and the modules plugged in."""

    def __init__(
        self, config: Config | None = None, *, modules: Sequence[KeelModule] | None = None
    ) -> None:
        """`modules`: the modules to run; None means those installed packages declare."""
        self.config = config or Config()
        self.db = Database(self.config)
        self.metrics_registry = new_registry()
        self.http_metrics = HttpMetrics(self.metrics_registry)
        extra = discover_modules() if modules is None else modules
        self.modules: tuple[KeelModule, ...] = (_core_module(), *builtin_modules(), *extra)
        self.migration_locations = migration_locations(self.modules)
        self.started_at = time.monotonic()
        self.instance_id: str | None = None
        self.redis: Any = None
        self.changes = ChangeWatcher(self.db, poll_interval=self.config.changes_poll_interval)
        """Change notices: modules watch topics here to reload what they cache."""
        self.running = False
        self._keyring: Keyring | None = None
        self._keyring_lock = asyncio.Lock()
        self._kernel_routes: list[Any] = []
        self.state: dict[str, Any] = {}
        """Per-kernel runtime objects modules keep (e.g. identity's key and revocation caches)."""

    # --- lifecycle -------------------------------------------------------------------------
    async def startup(self) -> None:
        """Migrate (or check migrations), connect Redis, and run every module's startup hook."""
        state = await prepare(
            self.db,
            auto_migrate=self.config.should_auto_migrate,
            locations=self.migration_locations,
        )
        _logger.info("database ready", revision=",".join(state.current))
        self.instance_id = await ensure_instance(self.db)
        if self.config.redis_url:
            self.redis = connect_redis(self.config.redis_url)
        await self.changes.start(redis=self.redis, scope=self.instance_id)
        for module in self.modules:
            for hook in module.on_startup:
                await hook(self)
        self.running = True
        _logger.info(
            "keel started",
            version=__version__,
            database=self.db.dialect,
            instance=self.instance_id,
        )

    async def shutdown(self) -> None:
        """Run shutdown hooks in reverse order and release connections."""
        self.running = False
        for module in reversed(self.modules):
            for hook in reversed(module.on_shutdown):
                try:
                    await hook(self)
                except Exception as exc:
                    _logger.error("shutdown hook failed", module=module.name, exc_info=exc)
        await self.changes.stop()
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        await self.db.dispose()
        _logger.info("keel stopped")

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """ASGI lifespan: startup before the first request, shutdown after the last."""
        if isinstance(app, FastAPI):
            self._move_kernel_routes_last(app)
        try:
            await self.startup()
        except BaseException:
            await self.shutdown()  # release what a failed start opened
            raise
        try:
            yield
        finally:
            await self.shutdown()

    async def keyring(self) -> Keyring:
        """The keyring, loaded on first use (creating the master key file on SQLite)."""
        async with self._keyring_lock:
            if self._keyring is None:
                keyring = Keyring(load_master_key(self.config))
                await keyring.load(self.db)
                self._keyring = keyring
        return self._keyring

    # --- readiness -------------------------------------------------------------------------
    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        """Every readiness check by name: the kernel's own, then the modules'."""
        checks: dict[str, ReadinessCheck] = {
            "database": self.db.ping,
            "migrations": self._check_migrations,
        }
        if self.config.redis_url:
            checks["redis"] = self._check_redis
        for module in self.modules:
            for name, factory in module.readiness.items():
                checks[name] = factory(self)
        return checks

    async def _check_migrations(self) -> None:
        state = await migration_state(self.db, self.migration_locations)
        if not state.at_head:
            raise CheckFailed("migrations pending: run `keel db upgrade`")

    async def _check_redis(self) -> None:
        if self.redis is None:
            raise CheckFailed("not connected")
        await self.redis.ping()

    # --- assembly --------------------------------------------------------------------------
    def middleware(self) -> list[Middleware]:
        """The middleware chain, outermost first, from every module's slots."""
        specs = sorted(
            (spec for module in self.modules for spec in module.middleware),
            key=lambda spec: spec.slot,
        )
        return [Middleware(cast("Any", spec.factory), **spec.options(self)) for spec in specs]

    def routers(self) -> list[APIRouter]:
        """Routers contributed by modules."""
        return [factory(self) for module in self.modules for factory in module.routers]

    def landing_links(self) -> list[LandingLink]:
        """Links modules want on the landing page."""
        return [link for module in self.modules for link in module.landing_links]

    def adopt_routes(self, app: FastAPI, before: int) -> None:
        """Mark the routes `app` gained since it had `before` routes as the kernel's own."""
        self._kernel_routes.extend(app.router.routes[before:])

    def _move_kernel_routes_last(self, app: FastAPI) -> None:
        # Routes are matched in order. The application's exact routes, which carry its
        # traffic, are tried first (one it defines at a kernel path, say /readyz, wins); the
        # kernel's come before any mount or catch-all (an SPA mounted at "/" must not swallow
        # /healthz).
        ours = {id(route) for route in self._kernel_routes}
        theirs = [r for r in app.router.routes if id(r) not in ours]
        kernel = [r for r in app.router.routes if id(r) in ours]
        cut = next((i for i, r in enumerate(theirs) if _is_catch_all(r)), len(theirs))
        app.router.routes[:] = [*theirs[:cut], *kernel, *theirs[cut:]]
        mark_changed = getattr(app.router, "_mark_routes_changed", None)
        if callable(mark_changed):  # FastAPI versions that cache their routing tables
            mark_changed()

    def install(self, app: FastAPI, *, include_lifespan: bool = True) -> FastAPI:
        """Mount the kernel into `app`: middleware, error handling, health, metrics, routes."""
        app.state.keel = self
        before = len(app.router.routes)
        install_exception_handlers(app)
        # add_middleware puts each new one outermost, so add them innermost first.
        for item in reversed(self.middleware()):
            app.add_middleware(item.cls, *item.args, **item.kwargs)
        app.include_router(health_router(self.readiness_checks, started_at=self.started_at))
        if self.config.metrics_enabled:

            async def metrics() -> Response:
                # async on purpose: collection reads counters the event loop writes
                return metrics_endpoint(self.metrics_registry)

            app.add_api_route(
                "/metrics",
                metrics,
                include_in_schema=False,
                methods=["GET"],
                dependencies=[Depends(public)],
            )
        for router in self.routers():
            app.include_router(router)
        self.adopt_routes(app, before)
        if include_lifespan:
            app.router.lifespan_context = _chain_lifespan(self, app.router.lifespan_context)
        return app


def _is_catch_all(route: Any) -> bool:
    return isinstance(route, Mount) or ":path}" in getattr(route, "path", "")


def _chain_lifespan(
    keel: Keel, inner: Callable[[Any], AbstractAsyncContextManager[Any]]
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with keel.lifespan(app), inner(app) as state:
            yield state

    return lifespan


def create_app(
    config: Config | None = None,
    *,
    modules: Sequence[KeelModule] | None = None,
    configure_logs: bool = True,
) -> FastAPI:
    """Keel's own server application: the kernel plus its landing page and API reference."""
    from keel.core.api import install_pages

    keel = Keel(config, modules=modules)
    if configure_logs:
        configure_logging(keel.config)
    app = FastAPI(
        title="Keel",
        version=__version__,
        summary="The production kernel for Python web services.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=keel.lifespan,
        responses=problem_responses(400, 422, 500),
    )
    _document_problems(app)
    keel.install(app, include_lifespan=False)
    before = len(app.router.routes)
    install_pages(app, keel, api_prefix=API_PREFIX)
    keel.adopt_routes(app, before)
    return app


def _document_problems(app: FastAPI) -> None:
    """Put the Problem schema in the OpenAPI components, where `problem_responses` points."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["Problem"] = Problem.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            for name, definition in components["Problem"].pop("$defs", {}).items():
                components.setdefault(name, definition)
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI, config: Config | None = None, **options: Any) -> Keel:
    """Give an existing FastAPI `app` the Keel kernel; returns the kernel."""
    keel = Keel(config, **options)
    keel.install(app)
    return keel
