"""Set-up for `jobs.py`: the job kinds, the three queues' databases, and what the jobs record.

Importing this module registers Keel's bench kinds (`bench.noop`, `bench.probe`,
`bench.sleep`); `jobs.py`'s `keel worker` subprocess imports it for the same reason. The
PostgreSQL side gets one fresh database per queue (`<prefix>_keel`, `_pgq`, `_proc`) on the
server of `BENCH_POSTGRES_URL` (default the `test` database on 127.0.0.1), dropped on the way
out; Keel on SQLite uses a file in the run's temp dir.

Each no-op handler counts itself in `TALLY` (the driver then knows when to look at the
database for the last completions, without polling a count all the time) and each probe
records the wall-clock time it started, by sequence number.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text

from keel import Config
from keel.core.database import Database
from keel.core.migrate import upgrade
from keel.jobs import JobContext, job

__all__ = [
    "KEEL_TABLES",
    "MASTER_KEY",
    "POSTGRES_URL",
    "TALLY",
    "Databases",
    "Probes",
    "conninfo",
    "keel_config",
    "open_keel",
    "pgqueuer_connect",
    "pgqueuer_driver_name",
    "pgqueuer_manager",
    "pgqueuer_setup",
    "postgres_problem",
    "probe_elsewhere",
    "procrastinate_app",
    "reset_keel",
    "send_probes",
]

POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# PostgreSQL deployments bring their own master key; any 32 bytes do for the bench.
MASTER_KEY = "a2VlbC10ZXN0LW1hc3Rlci1rZXktMzItYnl0ZXMhISE"
KEEL_TABLES = ("keel_job_logs", "keel_job_effects", "keel_job_attempts", "keel_jobs")


@dataclass
class Tally:
    """What the handlers of this process did: jobs run, and when each probe started."""

    done: int = 0
    starts: dict[int, float] = field(default_factory=dict)

    def reset(self) -> None:
        self.done = 0
        self.starts.clear()


TALLY = Tally()


@job("bench.noop", max_attempts=3)
async def noop(ctx: JobContext) -> None:
    TALLY.done += 1


@job("bench.probe", max_attempts=3)
async def probe(ctx: JobContext, seq: int) -> None:
    TALLY.starts.setdefault(seq, time.time())


@job("bench.sleep", max_attempts=5)
async def sleep(ctx: JobContext, seconds: float) -> None:
    await asyncio.sleep(seconds)


# --- PostgreSQL --------------------------------------------------------------------------------
def conninfo(database: str | None = None) -> str:
    """libpq form of `POSTGRES_URL`, optionally for another database on the same server."""
    url = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    if database is None:
        return url
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + f"/{database}" + (f"?{query}" if query else "")


async def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    try:
        connection = await psycopg.AsyncConnection.connect(conninfo(), connect_timeout=5)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    await connection.close()
    return None


class Databases:
    """One fresh database per queue on the bench's PostgreSQL server; `drop()` removes them."""

    def __init__(self) -> None:
        prefix = f"bench_jobs_{uuid.uuid4().hex[:8]}"
        self.names = {system: f"{prefix}_{system}" for system in ("keel", "pgq", "proc")}
        self.created: list[str] = []

    async def _admin(self, statement: str) -> None:
        async with await psycopg.AsyncConnection.connect(conninfo(), autocommit=True) as conn:
            await conn.execute(statement)  # type: ignore[arg-type]

    async def create(self) -> None:
        for name in self.names.values():
            await self._admin(f'CREATE DATABASE "{name}"')
            self.created.append(name)

    async def drop(self) -> None:
        for name in self.created:
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()

    def conninfo(self, system: str) -> str:
        return conninfo(self.names[system])

    def sqlalchemy_url(self, system: str) -> str:
        return "postgresql+psycopg://" + self.conninfo(system).removeprefix("postgresql://")


# --- Keel --------------------------------------------------------------------------------------
def keel_config(url: str, data_dir: Path) -> Config:
    """A Config for `url` (PostgreSQL or SQLite) that reads no environment or keel.toml."""
    if url.startswith("sqlite"):
        return Config(database_url=url, data_dir=data_dir)
    return Config(database_url=url, data_dir=data_dir, master_key=MASTER_KEY)


async def open_keel(url: str, data_dir: Path) -> Database:
    """A migrated Keel database."""
    db = Database(keel_config(url, data_dir))
    await upgrade(db)
    return db


async def reset_keel(db: Database) -> None:
    """Empty the job tables (TRUNCATE on PostgreSQL, then ANALYZE once refilled)."""
    async with db.transaction() as session:
        if db.dialect == "postgresql":
            await session.execute(
                text(f"TRUNCATE {', '.join(KEEL_TABLES)}, keel_cron_slots CASCADE")
            )
        else:
            for table in (*KEEL_TABLES, "keel_cron_slots"):
                await session.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - constants


# --- pgqueuer ----------------------------------------------------------------------------------
def pgqueuer_driver_name() -> str:
    """asyncpg (pgqueuer's own choice and its faster driver here) when installed, else psycopg."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "psycopg"
    return "asyncpg"


async def pgqueuer_connect(url: str, driver: str) -> tuple[Any, Any]:
    """(connection, pgqueuer Queries) on `url` through `driver`; close the connection after."""
    from pgqueuer.db import AsyncpgDriver, PsycopgDriver
    from pgqueuer.queries import Queries

    if driver == "asyncpg":
        import asyncpg

        connection: Any = await asyncpg.connect(url)
        return connection, Queries(AsyncpgDriver(connection))
    connection = await psycopg.AsyncConnection.connect(url, autocommit=True)
    return connection, Queries(PsycopgDriver(connection))


async def pgqueuer_setup(url: str) -> None:
    """Install pgqueuer's tables in the database at `url`."""
    connection, queries = await pgqueuer_connect(url, "psycopg")
    try:
        await queries.install()
    finally:
        await connection.close()


def pgqueuer_manager(queries: Any) -> Any:
    """A QueueManager on `queries` with the bench's two entrypoints."""
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager

    manager = QueueManager(queries)

    @manager.entrypoint("bench_noop")
    async def noop(job: Job) -> None:
        TALLY.done += 1

    @manager.entrypoint("bench_probe")
    async def probe(job: Job) -> None:
        TALLY.starts.setdefault(int(job.payload or b"0"), time.time())

    return manager


# --- procrastinate -----------------------------------------------------------------------------
def procrastinate_app(url: str) -> Any:
    """A procrastinate App on `url` with the bench's two tasks (open it before use)."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="bench_noop")
    async def noop() -> None:
        TALLY.done += 1

    @app.task(name="bench_probe")
    async def probe(seq: int) -> None:
        TALLY.starts.setdefault(seq, time.time())

    return app


# --- probes from another process ---------------------------------------------------------------
async def send_probes(
    one: Callable[[int], Awaitable[Any]], count: int, rate: float
) -> dict[int, float]:
    """Enqueue probes 0..count-1 at `rate` per second; the wall time each enqueue began.
    Probe -1 goes first, untimed: it opens the connection and warms the worker up."""
    await one(-1)
    await asyncio.sleep(0.5)
    sent: dict[int, float] = {}
    start = time.perf_counter()
    for seq in range(count):
        pause = start + seq / rate - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        sent[seq] = time.time()
        await one(seq)
    return sent


@dataclass(frozen=True)
class Probes:
    """What the sender process sends: `count` probes at `rate`/s to `system` at `url`."""

    system: str  # keel | pgqueuer | procrastinate
    url: str
    count: int
    rate: float
    data_dir: str = ""
    driver: str = ""


async def _probe_elsewhere(probes: Probes) -> dict[int, float]:
    system, url, count, rate = probes.system, probes.url, probes.count, probes.rate
    if system == "keel":
        from keel.jobs import enqueue

        db = Database(keel_config(url, Path(probes.data_dir)))

        async def one(seq: int) -> None:
            async with db.transaction() as session:
                await enqueue(session, "bench.probe", {"seq": seq})

        try:
            return await send_probes(one, count, rate)
        finally:
            await db.dispose()
    if system == "pgqueuer":
        connection, queries = await pgqueuer_connect(url, probes.driver)
        try:
            return await send_probes(
                lambda seq: queries.enqueue("bench_probe", str(seq).encode()), count, rate
            )
        finally:
            await connection.close()
    app = procrastinate_app(url)
    async with app.open_async():
        deferrer = app.configure_task("bench_probe")
        return await send_probes(lambda seq: deferrer.defer_async(seq=seq), count, rate)


def probe_elsewhere(probes: Probes) -> dict[int, float]:
    """In a separate (spawned) process: send the probes as an application process would."""
    return asyncio.run(_probe_elsewhere(probes))
