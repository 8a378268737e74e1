"""Running a published query: read-only and time-limited by the database itself (a table
write fails even through a function the check does not know), on a connection that is
discarded afterwards (PostgreSQL) so no session-level effect outlives the query."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from keel.core.database import Database
from keel.registry.cache import Published

__all__ = ["run_query"]

# SQLite virtual machine steps between two looks at the clock (a few microseconds of work).
_PROGRESS_STEPS = 1000


def _sql_of(query: Published | BaseModel | str) -> str:
    if isinstance(query, str):
        return query
    data = query.data if isinstance(query, Published) else query
    sql = getattr(data, "sql", None)
    if not isinstance(sql, str):
        raise TypeError("run_query() takes a SQL text, a SqlQuery or a published sql_query")
    return sql


async def run_query(
    db: Database,
    query: Published | BaseModel | str,
    params: Mapping[str, Any] | None = None,
    *,
    timeout: float = 5.0,
) -> list[dict[str, Any]]:
    """Run a published SQL query (or its `SqlQuery`, or its text) and return its rows.

    On PostgreSQL it runs in a `READ ONLY` transaction with `statement_timeout` set to
    `timeout` seconds for that transaction only; the transaction is rolled back and the
    connection is then closed instead of going back to the pool, so nothing the query left
    in its session (a session advisory lock, which a rollback keeps) outlives it. On SQLite the
    connection runs with `PRAGMA query_only` and a progress handler interrupts the query
    after `timeout` seconds. Placeholders are `:name`, bound from `params`. A table write is
    refused by the database (`sqlalchemy.exc.DBAPIError`); so is a query running longer
    than `timeout`.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    statement = text(_sql_of(query))
    values = dict(params or {})
    async with db.engine.connect() as connection:
        if db.dialect == "sqlite":
            return await _run_sqlite(connection, statement, values, timeout)
        try:
            async with connection.begin() as transaction:
                await connection.exec_driver_sql("SET TRANSACTION READ ONLY")
                await connection.execute(
                    text("SELECT set_config('statement_timeout', :ms, true)"),
                    {"ms": str(max(1, round(timeout * 1000)))},
                )
                result = await connection.execute(statement, values)
                rows = [dict(row._mapping) for row in result]
                await transaction.rollback()
            return rows
        finally:
            # Session-level effects survive a rollback; the session itself does not.
            await connection.invalidate()


async def _run_sqlite(
    connection: AsyncConnection, statement: TextClause, values: dict[str, Any], timeout: float
) -> list[dict[str, Any]]:
    raw = (await connection.get_raw_connection()).driver_connection
    if raw is None:
        raise RuntimeError("the SQLite connection is closed")
    deadline = time.monotonic() + timeout

    def expired() -> int:
        return 1 if time.monotonic() > deadline else 0

    await connection.exec_driver_sql("PRAGMA query_only = ON")
    await raw.set_progress_handler(expired, _PROGRESS_STEPS)
    try:
        result = await connection.execute(statement, values)
        return [dict(row._mapping) for row in result]
    finally:
        try:
            await raw.set_progress_handler(None, 0)
            await connection.rollback()
            await connection.exec_driver_sql("PRAGMA query_only = OFF")
        except Exception:
            # A connection whose mode cannot be restored must not go back to the pool.
            await connection.invalidate()
            raise
