"""`run_query` runs a published query so that the database itself refuses writes (and, on
PostgreSQL, long statements), whatever the query contains."""

from __future__ import annotations

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


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_long_query_is_cancelled_after_the_timeout(migrated_db: Database) -> None:
    """On PostgreSQL the statement timeout stops a query that runs too long."""
    start = time.monotonic()
    with pytest.raises(DBAPIError, match="statement timeout"):
        await run_query(migrated_db, "SELECT pg_sleep(5)", timeout=0.2)
    assert time.monotonic() - start < 3
    assert await run_query(migrated_db, "SELECT 1 AS one") == [{"one": 1}]


async def test_bad_arguments_are_refused(migrated_db: Database) -> None:
    """A zero timeout and content without `sql` are errors before anything runs."""
    with pytest.raises(ValueError, match="timeout"):
        await run_query(migrated_db, "SELECT 1", timeout=0)
    with pytest.raises(TypeError):
        await run_query(migrated_db, SqlQuery.model_construct())
