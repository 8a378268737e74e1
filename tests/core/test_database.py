"""Database: SQLite pragmas, transactions, and concurrent writers on both dialects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
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
    """Many concurrent read-modify-write transactions all commit, none lost, no lock errors."""
    db = Database(config)
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
            await session.execute(text("INSERT INTO counter (n) VALUES (0)"))

        async def bump() -> None:
            async with db.transaction() as session:
                await session.execute(text("UPDATE counter SET n = n + 1"))
                await session.execute(text("SELECT n FROM counter"))

        await asyncio.gather(*(bump() for _ in range(60)))
        async with db.session() as session:
            assert await session.scalar(text("SELECT n FROM counter")) == 60
    finally:
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
    """Several kernels starting at once on an empty database share one instance id."""
    from keel import Keel

    kernels = [Keel(config) for _ in range(4)]
    await upgrade(kernels[0].db)
    try:
        ids = await asyncio.gather(*(kernel._ensure_instance() for kernel in kernels))
        assert len(set(ids)) == 1
    finally:
        for kernel in kernels:
            await kernel.db.dispose()
