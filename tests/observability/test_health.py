"""Health and readiness: ready when the database answers at head, 503 naming what fails."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text

from keel import Config, Keel, create_app
from keel.core.errors import StartupError
from tests.conftest import POSTGRES_URL, TEST_MASTER_KEY, client_for, postgres_problem, require


async def test_healthz_answers(client: httpx.AsyncClient) -> None:
    """Liveness answers JSON with the version."""
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readyz_when_ready(client: httpx.AsyncClient) -> None:
    """Readiness lists each check as passing."""
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"]
    assert body["checks"]["migrations"]["ok"]


async def test_readyz_503_when_a_migration_is_missing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A database behind the shipped migrations makes readiness fail, naming `migrations`."""
    keel: Keel = app.state.keel
    async with keel.db.transaction() as session:
        await session.execute(text("DELETE FROM keel_alembic_version"))
    response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["migrations"]
    assert "keel db upgrade" in body["checks"]["migrations"]["reason"]
    assert response.headers["content-type"] == "application/problem+json"


async def test_unmigrated_postgres_refuses_to_start(make_config: Callable[..., Config]) -> None:
    """Without auto-migration, startup on an empty database fails with a one-line hint."""
    keel = Keel(make_config(auto_migrate=False))
    with pytest.raises(StartupError) as caught:
        await keel.startup()
    assert "not migrated" in caught.value.detail
    assert caught.value.hint == "run `keel db upgrade` first"
    await keel.db.dispose()


async def test_readyz_503_when_sqlite_file_is_corrupted(tmp_path: Path) -> None:
    """Overwriting the SQLite file with garbage makes readiness fail, naming `database`."""
    path = tmp_path / "keel.db"
    config = Config(database_url=f"sqlite+aiosqlite:///{path.as_posix()}", data_dir=tmp_path)
    application = create_app(config, configure_logs=False)
    async with LifespanManager(application), client_for(application) as http:
        assert (await http.get("/readyz")).status_code == 200
        for damaged in (path, path.with_name("keel.db-wal")):
            if damaged.exists():
                size = damaged.stat().st_size
                with damaged.open("r+b") as handle:
                    handle.write(b"\xde\xad\xbe\xef" * (size // 4))
        response = await http.get("/readyz")
        assert response.status_code == 503
        assert "database" in response.json()["failing"]
        assert "SQLITE" not in response.text.upper().replace("SQLITE_", "")


class TcpProxy:
    """A loopback TCP proxy to a real server, which the test can stop like a dead host."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture
async def proxied_postgres(postgres_url: str) -> AsyncIterator[tuple[str, TcpProxy]]:
    """The test's Postgres schema, reached through a proxy the test can kill."""
    require(postgres_problem())
    proxy = TcpProxy(("127.0.0.1", 5432))
    port = await proxy.start()
    yield postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}"), proxy
    with contextlib.suppress(Exception):
        await proxy.stop()


@pytest.mark.postgres
async def test_readyz_503_when_postgres_stops(
    proxied_postgres: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    """When the database server goes away, readiness fails fast, naming `database`."""
    assert "127.0.0.1:5432" in POSTGRES_URL
    url, proxy = proxied_postgres
    config = Config(
        database_url=url,
        auto_migrate=True,
        data_dir=tmp_path,
        database_timeout=1.0,
        master_key=TEST_MASTER_KEY,
    )
    application = create_app(config, configure_logs=False)
    async with LifespanManager(application), client_for(application) as http:
        assert (await http.get("/readyz")).status_code == 200
        await proxy.stop()
        started = asyncio.get_running_loop().time()
        response = await http.get("/readyz")
        elapsed = asyncio.get_running_loop().time() - started
        assert response.status_code == 503
        assert "database" in response.json()["failing"]
        assert elapsed < 5, "readiness must not hang on a dead database"
        assert "5432" not in response.text and "127.0.0.1" not in response.text


@pytest.mark.redis
async def test_readyz_checks_redis(make_config: Callable[..., Config], redis_url: str) -> None:
    """With Redis configured, readiness includes it, and fails naming it when unreachable."""
    application = create_app(make_config(redis_url=redis_url), configure_logs=False)
    async with LifespanManager(application), client_for(application) as http:
        body = (await http.get("/readyz")).json()
        assert body["checks"]["redis"]["ok"]
    dead = create_app(make_config(redis_url="redis://127.0.0.1:1/0"), configure_logs=False)
    async with LifespanManager(dead), client_for(dead) as http:
        response = await http.get("/readyz")
        assert response.status_code == 503
        assert response.json()["failing"] == ["redis"]
