"""Database: SQLite pragmas, transactions, and concurrent writers on both dialects."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import text

from keel import Config
from keel.core.database import Database
from keel.core.migrate import migration_state, upgrade


async def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path: Path) -> None:
    """SQLite connections use WAL, foreign keys and a busy timeout."""
    db = Database(Config(data_dir=tmp_path))
    try:
        async with db.session() as session:
            assert (await session.scalar(text("PRAGMA journal_mode"))) == "wal"
            assert (await session.scalar(text("PRAGMA foreign_keys"))) == 1
            assert (await session.scalar(text("PRAGMA busy_timeout"))) == 5000
    finally:
        await db.dispose()


async def test_transaction_commits_or_rolls_back(config: Config) -> None:
    """A write transaction commits on success and leaves nothing behind when it raises."""
    db = Database(config)
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE t (v INTEGER NOT NULL)"))
        async with db.transaction() as session:
            await session.execute(text("INSERT INTO t (v) VALUES (1)"))

        async def insert_then_fail() -> None:
            async with db.transaction() as session:
                await session.execute(text("INSERT INTO t (v) VALUES (2)"))
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError):
            await insert_then_fail()
        async with db.session() as session:
            assert (await session.execute(text("SELECT v FROM t"))).scalars().all() == [1]
    finally:
        await db.dispose()


async def test_concurrent_writers_never_fail_or_lose_rows(config: Config) -> None:
    """Writers in several "processes" (separate engines) doing read-then-write all commit,
    none is lost, and none fails with "database is locked"."""
    dbs = [Database(config) for _ in range(3)]
    try:
        async with dbs[0].transaction() as session:
            await session.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
            await session.execute(text("INSERT INTO counter (n) VALUES (0)"))
        lock = " FOR UPDATE" if config.dialect == "postgresql" else ""

        async def bump(db: Database) -> None:
            async with db.transaction() as session:
                current = await session.scalar(text(f"SELECT n FROM counter{lock}"))
                await asyncio.sleep(0)
                await session.execute(text("UPDATE counter SET n = :n"), {"n": current + 1})

        await asyncio.gather(*(bump(db) for db in dbs for _ in range(20)))
        async with dbs[0].session() as session:
            assert await session.scalar(text("SELECT n FROM counter")) == 60
    finally:
        for db in dbs:
            await db.dispose()


async def test_nested_transaction_is_refused_not_deadlocked(config: Config) -> None:
    """A transaction opened inside another in the same task fails at once, on both dialects."""
    db = Database(config)
    try:

        async def nested() -> None:
            async with db.transaction(), db.transaction():
                pass

        async def connection_in_session() -> None:
            async with db.transaction(), db.write_connection():
                pass

        async def session_in_connection() -> None:
            async with db.write_connection(), db.transaction():
                pass

        for attempt in (nested, connection_in_session, session_in_connection):
            with pytest.raises(RuntimeError, match="pass the session down"):
                await asyncio.wait_for(attempt(), 5)
    finally:
        await db.dispose()


async def test_sqlite_writer_waits_at_most_the_timeout(tmp_path: Path) -> None:
    """A writer queued behind a stuck one gives up with 503 after `database_timeout`."""
    from keel.core.errors import ServiceUnavailable

    db = Database(Config(data_dir=tmp_path, database_timeout=0.3))
    release = asyncio.Event()

    async def stuck() -> None:
        async with db.transaction():
            await release.wait()

    async def second() -> None:
        async with db.transaction():
            pass

    holder = asyncio.create_task(stuck())
    await asyncio.sleep(0.05)
    try:
        with pytest.raises(ServiceUnavailable):
            await asyncio.wait_for(second(), 5)
    finally:
        release.set()
        await holder
        await db.dispose()


async def test_migrations_upgrade_is_idempotent(config: Config) -> None:
    """Upgrading twice is a no-op the second time, and the state reports head."""
    db = Database(config)
    try:
        assert not (await migration_state(db)).at_head
        first = await upgrade(db)
        second = await upgrade(db)
        assert first.at_head
        assert second.current == first.current
    finally:
        await db.dispose()


def test_display_url_hides_password() -> None:
    """The URL shown in logs and pages masks the password."""
    db = Database(Config(database_url="postgresql+psycopg://keel:s3cret@127.0.0.1:1/x"))
    assert "s3cret" not in db.display_url


async def test_concurrent_first_starts_agree_on_one_instance(config: Config) -> None:
    """Several processes (kernels, standalone workers) starting at once on an empty database
    share one instance id."""
    from keel.core.process import ensure_instance

    dbs = [Database(config) for _ in range(4)]
    await upgrade(dbs[0])
    try:
        ids = await asyncio.gather(*(ensure_instance(db) for db in dbs))
        assert len(set(ids)) == 1
    finally:
        for db in dbs:
            await db.dispose()


async def test_concurrent_migrators_all_succeed(config: Config) -> None:
    """Several processes migrating the same empty database at once end at head, no errors."""
    dbs = [Database(config) for _ in range(3)]
    try:
        states = await asyncio.gather(*(upgrade(db) for db in dbs))
        assert all(state.at_head for state in states)
    finally:
        for db in dbs:
            await db.dispose()


async def test_application_alembic_history_does_not_collide(config: Config) -> None:
    """An application's own `alembic_version` table is not mistaken for Keel's."""
    db = Database(config)
    try:
        await upgrade(db)
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
            await session.execute(text("INSERT INTO alembic_version VALUES ('user_app_0007')"))
        assert (await migration_state(db)).at_head
        assert (await upgrade(db)).at_head
    finally:
        await db.dispose()


async def test_sqlite_table_rebuild_keeps_child_rows(tmp_path: Path) -> None:
    """Altering a parent table on SQLite (a rebuild) inside a migration transaction does not
    cascade-delete its children, and foreign keys are back on afterwards."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    db = Database(Config(data_dir=tmp_path))
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
            await session.execute(
                text(
                    "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                    "REFERENCES parent(id) ON DELETE CASCADE)"
                )
            )
            await session.execute(text("INSERT INTO parent VALUES (1)"))
            await session.execute(text("INSERT INTO child VALUES (1, 1), (2, 1)"))

        def rebuild(connection: Any) -> None:
            operations = Operations(MigrationContext.configure(connection))
            with operations.batch_alter_table("parent", recreate="always") as batch:
                batch.add_column(sa.Column("name", sa.String(20)))

        async with db.migration_transaction() as connection:
            await connection.run_sync(rebuild)
        async with db.session() as session:
            assert await session.scalar(text("SELECT count(*) FROM child")) == 2
            assert await session.scalar(text("PRAGMA foreign_keys")) == 1
    finally:
        await db.dispose()


def test_redis_configured_without_its_client_is_a_startup_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Redis URL without the redis package stops startup with a one-line hint to install
    it (for the kernel's client and the rate limiter's pool alike)."""
    import sys

    from keel.core.errors import StartupError
    from keel.core.process import connect_redis
    from keel.protection.ratestore import redis_storage

    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    for start in (connect_redis, redis_storage):
        with pytest.raises(StartupError) as raised:
            start("redis://127.0.0.1:6379/0")
        assert raised.value.hint == "pip install 'keel-server[redis]'"
