"""Shared fixtures: a clean database per test on SQLite and PostgreSQL, and app clients.

PostgreSQL and Redis tests skip with a reason when the servers are down, unless
`KEEL_TEST_REQUIRE_SERVICES=1` (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic import BaseModel, Field
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from keel import Config, Keel, create_app, install
from keel.core.database import Database
from keel.core.errors import NotFound
from keel.core.migrate import upgrade
from keel.observability.logging import configure_logging

POSTGRES_URL = os.environ.get(
    "KEEL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("KEEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("KEEL_TEST_REQUIRE_SERVICES") == "1"
TEST_MASTER_KEY = "a2VlbC10ZXN0LW1hc3Rlci1rZXktMzItYnl0ZXMhISE"  # 32 bytes, base64url


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's KEEL_* variables or a keel.toml in the working directory."""
    for name in list(os.environ):
        if name.startswith("KEEL_") and not name.startswith("KEEL_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KEEL_CONFIG_FILE", str(tmp_path / "absent-keel.toml"))


@pytest.fixture(scope="session", autouse=True)
def _production_logging() -> None:
    """Tests log through the same JSON pipeline production uses."""
    configure_logging(Config(log_format="json", log_level="debug"))


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can."""
    try:
        import psycopg
    except ModuleNotFoundError:
        return "psycopg is not installed (pip install -e '.[test]')"
    conninfo = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(conninfo, connect_timeout=2) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(exc).strip()[:120]}"
    return None


@cache
def redis_problem() -> str | None:
    """Why Redis cannot be used for tests, or None when it can."""
    if not _reachable("127.0.0.1", 6379):
        return "Redis at 127.0.0.1:6379 is unreachable"
    return None


def require(problem: str | None) -> None:
    """Skip (or, under KEEL_TEST_REQUIRE_SERVICES=1, fail) when a service is missing."""
    if problem is None:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{problem} (KEEL_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(problem)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests parametrized on the postgres dialect carry the `postgres` marker."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_url") == "postgresql":
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    require(postgres_problem())
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    conninfo = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def redis_url() -> str:
    """The Redis URL for tests (database 15)."""
    require(redis_problem())
    return REDIS_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A clean database per test: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{(tmp_path / 'keel.db').as_posix()}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def make_config(tmp_path: Path, database_url: str) -> Callable[..., Config]:
    """Build a Config on the test's database; keyword arguments override fields."""

    def make(**overrides: Any) -> Config:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "auto_migrate": True,
            "log_format": "json",
        }
        if database_url.startswith("postgresql"):
            # PostgreSQL deployments must bring their master key (SQLite makes a file).
            values["master_key"] = TEST_MASTER_KEY
        values.update(overrides)
        return Config(**values)

    return make


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    """The default test configuration on the test's database."""
    return make_config()


def client_for(app: FastAPI) -> httpx.AsyncClient:
    """An HTTP client calling `app` in-process, as a browser on 127.0.0.1 would."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 50000)),
        base_url="http://127.0.0.1:8000",
    )


_HASHES: dict[str, str] = {}


async def hashed(password: str) -> str:
    """An argon2id hash of `password`, computed once per test run (hashing is slow)."""
    if password not in _HASHES:
        from keel.identity.passwords import hash_password

        _HASHES[password] = await hash_password(password)
    return _HASHES[password]


@pytest.fixture
async def migrated_db(config: Config) -> AsyncIterator[Database]:
    """The test's database, migrated to head, disposed afterwards."""
    database = Database(config)
    await upgrade(database)
    yield database
    await database.dispose()


@pytest.fixture
async def app(config: Config) -> AsyncIterator[FastAPI]:
    """Keel's own app, started (migrated) and stopped around the test."""
    application = create_app(config, configure_logs=False)
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the started `app`."""
    async with client_for(app) as http:
        yield http


# --- a user's application with Keel installed, and a table it writes --------------------------
items_metadata = MetaData()
items_table = Table(
    "test_items",
    items_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
)


class ItemIn(BaseModel):
    """A thing the user's app stores."""

    name: str = Field(min_length=1, max_length=200)
    tags: list[Any] = Field(default_factory=list)


def build_user_app(config: Config) -> tuple[FastAPI, Keel]:
    """A plain FastAPI app, given Keel by one `install` call, with a write endpoint."""
    user_app = FastAPI()
    keel = install(user_app, config)

    @user_app.post("/items", status_code=201)
    async def create_item(item: ItemIn) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            result = await session.execute(items_table.insert().values(name=item.name))
            return {"id": result.inserted_primary_key[0], "name": item.name}

    @user_app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, Any]:
        async with keel.db.session() as session:
            row = (
                await session.execute(select(items_table).where(items_table.c.id == item_id))
            ).first()
        if row is None:
            raise NotFound(f"item {item_id} does not exist")
        return {"id": row.id, "name": row.name}

    @user_app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret=hunter2 at /srv/app/internal.py SELECT * FROM users")

    return user_app, keel


async def count_items(keel: Keel) -> int:
    """Rows in the user's table."""
    async with keel.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(items_table)) or 0)


@pytest.fixture
async def user_app(config: Config) -> AsyncIterator[tuple[FastAPI, Keel]]:
    """The user's app, started, with its table created."""
    application, keel = build_user_app(config)
    async with LifespanManager(application):
        async with keel.db.transaction() as session:
            connection = await session.connection()
            await connection.run_sync(items_metadata.create_all)
        yield application, keel


@pytest.fixture
async def user_client(user_app: tuple[FastAPI, Keel]) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the started user app."""
    async with client_for(user_app[0]) as http:
        yield http
