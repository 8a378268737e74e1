"""Running a published query: read-only and time-limited by the database itself, so even a
function the check does not know cannot write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text

from keel.core.database import Database
from keel.registry.cache import Published

__all__ = ["run_query"]


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
    `timeout` seconds for that transaction only, and the transaction is rolled back; on
    SQLite the connection runs with `PRAGMA query_only` (there is no statement timeout).
    Placeholders are `:name`, bound from `params`. A write is refused by the database
    (`sqlalchemy.exc.DBAPIError`); so is a query running longer than `timeout`.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    statement = text(_sql_of(query))
    values = dict(params or {})
    async with db.engine.connect() as connection:
        if db.dialect == "sqlite":
            await connection.exec_driver_sql("PRAGMA query_only = ON")
            try:
                result = await connection.execute(statement, values)
                return [dict(row._mapping) for row in result]
            finally:
                try:
                    await connection.rollback()
                    await connection.exec_driver_sql("PRAGMA query_only = OFF")
                except Exception:
                    # A connection whose mode cannot be restored must not go back to the pool.
                    await connection.invalidate()
                    raise
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
