"""Modules plug routers, middleware, readiness checks, hooks, links and CLI into the kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from asgi_lifespan import LifespanManager
from fastapi import APIRouter
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from typer.testing import CliRunner

from keel import Config, Keel, KeelModule, create_app
from keel.cli import add_module_commands, app
from keel.core.migrate import migration_state
from keel.core.modules import LandingLink, MiddlewareSpec, Slot
from keel.observability.health import CheckFailed
from tests.conftest import client_for


class StampMiddleware:
    """Adds a header naming the principal slot, to prove where module middleware runs."""

    def __init__(self, app: ASGIApp, *, value: str) -> None:
        self.app = app
        self.value = value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-stamp", self.value.encode())]
            await send(message)

        await self.app(scope, receive, stamped)


async def test_module_contributions_are_assembled(config: Config) -> None:
    """A module's router, middleware, readiness check, hooks and landing link all take effect."""
    calls: list[str] = []
    healthy = {"value": True}

    def router(_keel: Keel) -> APIRouter:
        api = APIRouter(prefix="/api/v1/demo")

        @api.get("/ping")
        async def ping() -> dict[str, bool]:
            return {"pong": True}

        return api

    async def started(_keel: Keel) -> None:
        calls.append("startup")

    async def stopped(_keel: Keel) -> None:
        calls.append("shutdown")

    def demo_check(_keel: Keel) -> Any:
        async def check() -> None:
            if not healthy["value"]:
                raise CheckFailed("demo is sad")

        return check

    module = KeelModule(
        name="demo",
        routers=(router,),
        middleware=(MiddlewareSpec(Slot.IDENTITY, StampMiddleware, lambda _k: {"value": "id"}),),
        readiness={"demo": demo_check},
        on_startup=(started,),
        on_shutdown=(stopped,),
        landing_links=(LandingLink("Demo", "/api/v1/demo/ping", "a module page"),),
    )
    application = create_app(config, modules=[module], configure_logs=False)
    async with LifespanManager(application), client_for(application) as http:
        assert calls == ["startup"]
        response = await http.get("/api/v1/demo/ping")
        assert response.json() == {"pong": True}
        assert response.headers["x-stamp"] == "id"
        assert 'href="/api/v1/demo/ping"' in (await http.get("/")).text
        assert (await http.get("/readyz")).json()["checks"]["demo"]["ok"]
        healthy["value"] = False
        body = (await http.get("/readyz")).json()
        assert body["failing"] == ["demo"]
        assert body["checks"]["demo"]["reason"] == "demo is sad"
    assert calls == ["startup", "shutdown"]


def test_middleware_order_follows_slots(config: Config) -> None:
    """Whatever order modules declare them in, middleware is assembled by slot."""
    module = KeelModule(
        name="late", middleware=(MiddlewareSpec(Slot.CSRF, StampMiddleware, lambda _k: {}),)
    )
    names = [m.cls.__name__ for m in Keel(config, modules=[module]).middleware()]
    assert names == [
        "TraceMiddleware",
        "GuardMiddleware",
        "ErrorsMiddleware",
        "MetricsMiddleware",
        "IdentityMiddleware",
        "RateLimitMiddleware",
        "CsrfMiddleware",
        "StampMiddleware",
    ]


def test_module_cli_commands_are_attached() -> None:
    """A module's Typer group becomes `keel <name> …`."""
    group = typer.Typer(help="Demo commands.")

    @group.command()
    def hello() -> None:
        """Say hello."""
        typer.echo("hello from demo")

    before = list(app.registered_groups)
    add_module_commands([("demo", lambda: group)])
    try:
        result = CliRunner().invoke(app, ["demo", "hello"])
    finally:
        app.registered_groups[:] = before
    assert result.output.strip() == "hello from demo"


DEMO_MIGRATIONS = Path(__file__).parent / "fixtures" / "demo_migrations"


async def test_module_migrations_run_on_their_own_branch(config: Config) -> None:
    """A module's migrations are applied at start beside Keel's, and readiness counts them."""
    module = KeelModule(name="demo", migrations=DEMO_MIGRATIONS)
    application = create_app(config, modules=[module], configure_logs=False)
    async with LifespanManager(application), client_for(application) as http:
        assert (await http.get("/readyz")).status_code == 200
        kernel: Keel = application.state.keel
        async with kernel.db.session() as session:
            assert await session.scalar(text("SELECT count(*) FROM demo_notes")) == 0
        state = await migration_state(kernel.db, kernel.migration_locations)
        assert state.at_head
        assert {"0001_core_instance", "demo_0001"} <= state.applied
        assert "demo_0001" in state.current


def test_modules_are_discovered_from_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed packages declare modules under `keel.modules`; a broken one is a clear error."""
    from importlib.metadata import EntryPoint

    from keel.core import modules as registry
    from keel.core.errors import StartupError

    good = EntryPoint("demo", "tests.test_modules:demo_module", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [good])
    assert [m.name for m in registry.discover_modules()] == ["demo"]
    bad = EntryPoint("broken", "tests.test_modules:not_a_module", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [bad])
    with pytest.raises(StartupError, match="not a KeelModule"):
        registry.discover_modules()


def demo_module() -> KeelModule:
    """A module factory, as an entry point would name it."""
    return KeelModule(name="demo", migrations=DEMO_MIGRATIONS)


def not_a_module() -> str:
    """What a misdeclared entry point might return."""
    return "nope"
