"""The database: one async SQLAlchemy engine per process, for SQLite or PostgreSQL.

SQLite runs in WAL mode with foreign keys on and a busy timeout, and its write transactions
are serialised in-process and begin with `BEGIN IMMEDIATE`, so a reader never has to upgrade to
a writer mid-transaction (the usual source of "database is locked"). PostgreSQL uses psycopg 3.
This module must never build SQL from strings that carry user input.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, TypeDecorator, event, text
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from keel.core.config import Config, redact_url
from keel.core.errors import ServiceUnavailable, StartupError

__all__ = ["Base", "Database", "UTCDateTime"]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, on both dialects.

    SQLite keeps no offset and hands back naive values; PostgreSQL hands back aware ones.
    Naive values are refused on the way in (they are a bug), and UTC is attached on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every Keel table; constraint names are stable across dialects."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_WRITE_OPTION = "keel_write"

TCP_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 15,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 45_000,  # ms: unacknowledged data on a dead link fails the query
}
"""libpq options for every PostgreSQL connection Keel opens: a half-open connection (the
server or the network gone without a FIN) fails within about 45 s instead of hanging."""
_open_transaction: ContextVar[Database | None] = ContextVar("keel_open_transaction", default=None)
# Arbitrary but fixed: every Keel process migrating the same database takes the same lock.
_MIGRATION_LOCK_KEY = 0x6B65656C_6D6967
MIGRATION_WAIT_MS = 120_000
"""How long a SQLite migrator waits for another process's migration to finish."""


class Database:
    """Engine, sessions and transactions for one configured database."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.url = config.effective_database_url
        self.dialect = config.dialect
        self._write_lock = asyncio.Lock()
        self._sqlite_path: Path | None = None
        if self.dialect == "sqlite":
            self._prepare_sqlite_file()
            self.engine = create_async_engine(
                self.url,
                connect_args={"timeout": config.database_timeout},
                pool_pre_ping=False,
                hide_parameters=True,  # errors and logs never carry values (hashes, tokens)
            )
            _configure_sqlite(self.engine, busy_timeout_ms=self._busy_timeout_ms)
        else:
            try:
                import psycopg  # noqa: F401 - fail here with a hint, not deep in SQLAlchemy
            except ModuleNotFoundError:
                raise StartupError(
                    "PostgreSQL support is not installed",
                    hint="pip install 'keel-server[postgres]'",
                ) from None
            self.engine = create_async_engine(
                self.url,
                pool_size=config.database_pool_size,
                max_overflow=config.database_pool_size,
                pool_timeout=config.database_timeout,
                pool_pre_ping=True,
                connect_args={
                    "connect_timeout": max(1, int(config.database_timeout)),
                    # A server that vanished without closing (host down, network cut) is
                    # noticed by TCP within about a minute instead of hanging a query.
                    **TCP_KEEPALIVES,
                },
                hide_parameters=True,  # errors and logs never carry values (hashes, tokens)
            )
        self._write_engine = self.engine.execution_options(**{_WRITE_OPTION: True})
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = async_sessionmaker(self._write_engine, expire_on_commit=False)

    def _prepare_sqlite_file(self) -> None:
        database = make_url(self.url).database
        if database and database != ":memory:":
            self._sqlite_path = Path(database)
            self._sqlite_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def display_url(self) -> str:
        """The URL with any password masked, fit for logs and pages."""
        return redact_url(self.url)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads (and manual transactions); closed on exit."""
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed when the block exits, rolled back if it raises.

        On SQLite, writers in this process queue here (at most `database_timeout` seconds,
        then `ServiceUnavailable`) instead of inside SQLite's lock. Opening a transaction
        inside another in the same task is refused on both dialects: on SQLite it would wait
        for itself forever; pass the outer session down instead.
        """
        async with self._outermost("db.transaction()"):
            if self.dialect == "sqlite":
                async with (
                    self._sqlite_writer(),
                    self._write_sessions() as session,
                    session.begin(),
                ):
                    yield session
            else:
                async with self._write_sessions() as session, session.begin():
                    yield session

    @asynccontextmanager
    async def write_connection(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection in a write transaction, for hot paths that need no ORM session
        (the job queue's claims and completions). Same rules as `transaction()`."""
        async with self._outermost("db.write_connection()"):
            if self.dialect == "sqlite":
                async with (
                    self._sqlite_writer(),
                    self._write_engine.connect() as connection,
                    connection.begin(),
                ):
                    yield connection
            else:
                async with self.engine.connect() as connection, connection.begin():
                    yield connection

    @asynccontextmanager
    async def _outermost(self, what: str) -> AsyncIterator[None]:
        """Refuse a write transaction opened inside another of the same task (on SQLite it
        would wait for itself forever)."""
        if _open_transaction.get() is self:
            raise RuntimeError(
                f"{what} inside another transaction of this database: pass the session down "
                "(or the connection) instead of opening another"
            )
        token = _open_transaction.set(self)
        try:
            yield
        finally:
            _open_transaction.reset(token)

    @asynccontextmanager
    async def _sqlite_writer(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.config.database_timeout):
                await self._write_lock.acquire()
        except TimeoutError:
            raise ServiceUnavailable(
                "The database is busy; try again shortly.", headers={"Retry-After": "1"}
            ) from None
        try:
            yield
        finally:
            self._write_lock.release()

    @property
    def _busy_timeout_ms(self) -> int:
        return int(self.config.database_timeout * 1000)

    @asynccontextmanager
    async def migration_transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction for schema changes, safe against concurrent migrators.

        PostgreSQL: a transaction-scoped advisory lock (safe behind PgBouncer), so replicas
        that migrate at once run one after the other. SQLite: a separate connection with
        foreign keys off, because rebuilding a table (how SQLite alters one) drops the old
        table, and with foreign keys on that cascades into deleting child rows; the keys are
        checked before commit instead.
        """
        if self.dialect != "sqlite":
            async with self.engine.connect() as connection, connection.begin():
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
                yield connection
            return
        engine = create_async_engine(self.url, poolclass=NullPool)
        # Another process migrating holds the file's write lock for the whole migration,
        # which can take far longer than an ordinary write: wait for it, not fail.
        busy_ms = max(self._busy_timeout_ms, MIGRATION_WAIT_MS)
        _configure_sqlite(engine, busy_timeout_ms=busy_ms, foreign_keys=False)
        try:
            async with (
                self._write_lock,
                engine.execution_options(**{_WRITE_OPTION: True}).connect() as connection,
                connection.begin(),
            ):
                yield connection
                broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).first()
                if broken is not None:
                    raise StartupError(
                        f"a migration left rows in {broken[0]} without their parent",
                        hint="nothing was changed; report this migration as a bug",
                    )
        finally:
            await engine.dispose()

    async def ping(self) -> None:
        """Run a trivial query; raises if the database cannot be reached."""
        if self._sqlite_path is not None:
            # Pooled SQLite connections answer from their page cache even after the file is
            # gone or damaged; a fresh read-write open of the file is the honest probe.
            await asyncio.to_thread(_probe_sqlite_file, self._sqlite_path, self.config)
            return
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _probe_sqlite_file(path: Path, config: Config) -> None:
    uri = f"{path.resolve().as_uri()}?mode=rw"
    with closing(sqlite3.connect(uri, uri=True, timeout=config.database_timeout)) as connection:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()


def _use_wal(cursor: Any) -> None:
    """Put the file in WAL mode (it stays so). Switching needs the file to itself, and
    SQLite answers "database is locked" at once, without its busy handler, when another
    connection opens a new file at the same moment: that race is retried briefly."""
    for attempt in range(40):
        try:
            cursor.execute("PRAGMA journal_mode")
            if str(cursor.fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 39:
                raise
            time.sleep(0.05)


def _configure_sqlite(
    engine: AsyncEngine, *, busy_timeout_ms: int, foreign_keys: bool = True
) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the driver so BEGIN is issued by us (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            _use_wal(cursor)
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError:
            cursor.close()
            raise
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get(_WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")
