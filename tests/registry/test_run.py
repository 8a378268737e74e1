"""`run_query` runs a published query so that the database itself refuses writes (and, on
PostgreSQL, long statements), whatever the query contains."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from keel.core.database import Database
from keel.registry import SqlQuery, canonical_sql, run_query


async def _table(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(text("CREATE TABLE victim (id INTEGER PRIMARY KEY)"))
        await session.execute(text("INSERT INTO victim (id) VALUES (1), (2)"))


async def _count(db: Database) -> int:
    async with db.session() as session:
        return int(await session.scalar(text("SELECT count(*) FROM victim")) or 0)


async def test_a_published_query_returns_its_rows(migrated_db: Database) -> None:
    """The canonical text runs with `:name` parameters and answers rows as dicts."""
    await _table(migrated_db)
    sql = canonical_sql("SELECT id FROM victim WHERE id >= :low ORDER BY id")
    assert sql is not None
    rows = await run_query(migrated_db, SqlQuery(sql=sql), {"low": 2})
    assert rows == [{"id": 2}]


async def test_a_write_inside_the_query_is_refused_by_the_database(migrated_db: Database) -> None:
    """A statement that writes (as a function the check does not know might) fails, nothing
    changes, and the pooled connection writes normally afterwards."""
    await _table(migrated_db)
    writes = ["DELETE FROM victim"]
    if migrated_db.dialect != "sqlite":
        writes.append("WITH d AS (DELETE FROM victim RETURNING 1) SELECT count(*) FROM d")
    for sql in writes:
        with pytest.raises(DBAPIError):
            await run_query(migrated_db, sql)
    assert await _count(migrated_db) == 2
    async with migrated_db.transaction() as session:
        await session.execute(text("INSERT INTO victim (id) VALUES (3)"))
    assert await _count(migrated_db) == 3


SLOW = (
    "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 100000000) "
    "SELECT count(*) FROM c"
)


async def test_a_long_query_is_cancelled_after_the_timeout(migrated_db: Database) -> None:
    """The statement timeout (PostgreSQL) or progress handler (SQLite) stops a query that
    runs too long, and the next query runs normally."""
    start = time.monotonic()
    with pytest.raises(DBAPIError, match=r"statement timeout|interrupted"):
        await run_query(migrated_db, SLOW, timeout=0.2)
    assert time.monotonic() - start < 3
    assert await run_query(migrated_db, "SELECT 1 AS one") == [{"one": 1}]
    assert await run_query(migrated_db, "SELECT 2 AS two", timeout=30) == [{"two": 2}]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_session_effects_do_not_outlive_the_query(migrated_db: Database) -> None:
    """A session advisory lock taken by the query (as a function the check does not know
    might) is gone afterwards: its connection is discarded, not returned to the pool."""
    first = await run_query(migrated_db, "SELECT pg_backend_pid() AS pid")
    second = await run_query(migrated_db, "SELECT pg_backend_pid() AS pid")
    assert first != second
    await run_query(migrated_db, "SELECT pg_advisory_lock(4242) IS NULL AS locked")
    deadline = time.monotonic() + 3
    while True:
        async with migrated_db.transaction() as session:
            free = await session.scalar(text("SELECT pg_try_advisory_xact_lock(4242)"))
        if free or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)  # the discarded backend is still exiting
    assert free is True


async def test_bad_arguments_are_refused(migrated_db: Database) -> None:
    """A zero timeout and content without `sql` are errors before anything runs."""
    with pytest.raises(ValueError, match="timeout"):
        await run_query(migrated_db, "SELECT 1", timeout=0)
    with pytest.raises(TypeError):
        await run_query(migrated_db, SqlQuery.model_construct())
