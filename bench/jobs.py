"""Durable jobs: Keel's queue against pgqueuer and procrastinate on the same PostgreSQL.

One run measures, on one PostgreSQL server (a fresh database per queue) and on SQLite (a temp
file), in alternating rounds:

- **drain**: `--jobs` (20,000) no-op jobs enqueued in bulk (one statement: Keel
  `enqueue_many`, pgqueuer `Queries.enqueue` with lists, procrastinate `batch_defer_async`;
  timed to commit: enqueue jobs/s), the table analysed, then a worker started and timed until
  the database records every job as done (drain jobs/s). Cases: pgqueuer and Keel/PostgreSQL
  at batch 10 and 100 (pgqueuer `batch_size`, its concurrency unbounded; Keel `claim_batch`,
  with `SLOTS` (100) jobs at once), procrastinate at concurrency 10, Keel/SQLite at 10 and
  100. A drain stops at `--drain-cap`
  seconds; its rate is then the jobs done by that time (marked `capped`).
- **enqueue-to-start**: an idle worker waits (batch 10); `--probes` single jobs are enqueued
  one at a time at `--probe-rate` per second, each in its own transaction, from a separate
  (spawned) process with its own connection, as an application would (so PostgreSQL workers
  are woken by NOTIFY; Keel/SQLite enqueues on the worker's own event loop instead, its
  supported wake-up being in-process). Latency = handler start - time the enqueue call began
  (wall clocks of one machine); for Keel also the database's `started_at - created_at`.
- **rescue** (Keel): a `keel worker` subprocess with `KEEL_JOB_LEASE_SECONDS=--lease` runs
  long jobs and is SIGKILLed while an in-process worker (same lease) is idle; the time from
  the kill until that worker has re-claimed every job (target <= 2 x lease).

Everything stops by itself: the databases and the temp dir are removed at the end.

    python bench/jobs.py [--quick] [--jobs 20000] [--rounds 3] [--drain-cap 15] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, select, text

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _jobs_setup import (  # noqa: E402
    MASTER_KEY,
    TALLY,
    Databases,
    Probes,
    open_keel,
    pgqueuer_connect,
    pgqueuer_driver_name,
    pgqueuer_manager,
    pgqueuer_setup,
    postgres_problem,
    probe_elsewhere,
    procrastinate_app,
    reset_keel,
    send_probes,
)
from keel.core.database import Database  # noqa: E402
from keel.jobs import Worker, enqueue, enqueue_many  # noqa: E402
from keel.jobs.models import Job, JobAttempt, JobState  # noqa: E402

# (case, system, batch): alternated in this order every round.
CASES = (
    ("pgqueuer-b10", "pgqueuer", 10),
    ("keel-pg-b10", "keel-pg", 10),
    ("pgqueuer-b100", "pgqueuer", 100),
    ("keel-pg-b100", "keel-pg", 100),
    ("procrastinate-c10", "procrastinate", 10),
    ("keel-sqlite-b10", "keel-sqlite", 10),
    ("keel-sqlite-b100", "keel-sqlite", 100),
)
RATIOS = (  # (name, keel case, baseline case)
    ("keel-pg/pgqueuer b10", "keel-pg-b10", "pgqueuer-b10"),
    ("keel-pg/pgqueuer b100", "keel-pg-b100", "pgqueuer-b100"),
    ("keel-pg b10/procrastinate c10", "keel-pg-b10", "procrastinate-c10"),
)
SLOTS = 100  # Keel's concurrency in the drains (pgqueuer's is unbounded at any batch size)
TARGET_PG_DRAIN = 5000.0
TARGET_SQLITE_DRAIN = 3000.0
TARGET_P95_MS = 10.0
FULL = {"jobs": 20000, "rounds": 3, "drain_cap": 15.0, "probes": 150, "probe_rate": 25.0}
QUICK = {"jobs": 2000, "rounds": 1, "drain_cap": 5.0, "probes": 40, "probe_rate": 25.0}
WORKER = (
    "import sys; sys.path.insert(0, {bench!r}); import _jobs_setup; "
    "from keel.cli import main; sys.argv = ['keel', 'worker', '--concurrency', '10']; main()"
)


_SENDER: list[ProcessPoolExecutor] = []


async def _elsewhere(probes: Probes) -> dict[int, float]:
    """Send probes from the sender process (spawned once, reused), as an application would."""
    if not _SENDER:
        _SENDER.append(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
    loop = asyncio.get_running_loop()
    sent: dict[int, float] = await loop.run_in_executor(_SENDER[0], probe_elsewhere, probes)
    return sent


# --- the queues --------------------------------------------------------------------------------
class Keel:
    """Keel's queue on PostgreSQL or SQLite."""

    def __init__(self, name: str, db: Database, url: str, data_dir: Path) -> None:
        self.name, self.db, self.url, self.data_dir = name, db, url, data_dir
        self.worker: Worker | None = None
        self.task: asyncio.Task[None] | None = None

    async def reset(self) -> None:
        await reset_keel(self.db)

    async def enqueue_bulk(self, n: int) -> None:
        async with self.db.transaction() as session:
            await enqueue_many(session, "bench.noop", [{}] * n)

    async def analyze(self) -> None:
        async with self.db.transaction() as session:
            await session.execute(text("ANALYZE keel_jobs"))

    async def start(self, batch: int, *, lease: float = 30.0) -> None:
        self.worker = Worker(
            self.db, concurrency=max(batch, SLOTS), claim_batch=batch, lease=lease, grace=1.0
        )
        self.task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        if self.worker is not None and self.task is not None:
            self.worker.stop()
            await asyncio.wait_for(self.task, 60)
        self.worker = self.task = None

    async def completed(self, n: int) -> int:
        async with self.db.session() as session:
            query = select(func.count()).where(Job.state == JobState.COMPLETED)
            return int(await session.scalar(query) or 0)

    async def send_probes(self, count: int, rate: float) -> dict[int, float]:
        if self.db.dialect == "sqlite":  # SQLite wakes its workers in-process

            async def one(seq: int) -> None:
                async with self.db.transaction() as session:
                    await enqueue(session, "bench.probe", {"seq": seq})

            return await send_probes(one, count, rate)
        return await _elsewhere(Probes("keel", self.url, count, rate, str(self.data_dir)))

    async def db_latencies(self) -> list[float]:
        """`started_at - created_at` of the probes, in ms."""
        async with self.db.session() as session:
            rows = await session.execute(
                select(Job.args, Job.created_at, Job.started_at).where(
                    Job.kind == "bench.probe", Job.started_at.is_not(None)
                )
            )
            return sorted(
                (started - created).total_seconds() * 1000
                for args, created, started in rows
                if args["seq"] >= 0  # not the warm-up probe
            )


class PostgresQueue:
    """What pgqueuer and procrastinate share: a polling connection to their database."""

    table = ""

    def __init__(self, name: str, conninfo: str) -> None:
        self.name, self.conninfo = name, conninfo
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def open(self) -> None:
        self.conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def _execute(self, statement: str) -> None:
        assert self.conn is not None
        await self.conn.execute(statement)  # type: ignore[arg-type]

    async def _scalar(self, query: str) -> Any:
        assert self.conn is not None
        cursor = await self.conn.execute(query)  # type: ignore[arg-type]
        row = await cursor.fetchone()
        return row[0] if row else None

    async def analyze(self) -> None:
        await self._execute(f"ANALYZE {self.table}")

    async def db_latencies(self) -> list[float]:
        return []


class PgQueuer(PostgresQueue):
    """pgqueuer on `driver` (asyncpg when installed, as pgqueuer recommends; else psycopg);
    done jobs leave its table."""

    table = "pgqueuer"

    def __init__(self, name: str, conninfo: str, driver: str) -> None:
        super().__init__(name, conninfo)
        self.driver = driver
        self.manager: Any = None
        self.worker_conn: Any = None
        self.task: asyncio.Task[None] | None = None

    async def reset(self) -> None:
        await self._execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")

    async def enqueue_bulk(self, n: int) -> None:
        connection, queries = await pgqueuer_connect(self.conninfo, self.driver)
        try:
            await queries.enqueue(["bench_noop"] * n, [None] * n, [0] * n)
        finally:
            await connection.close()

    async def start(self, batch: int) -> None:
        self.worker_conn, queries = await pgqueuer_connect(self.conninfo, self.driver)
        self.manager = pgqueuer_manager(queries)
        self.task = asyncio.create_task(self.manager.run(batch_size=batch))

    async def stop(self) -> None:
        if self.manager is not None and self.task is not None:
            self.manager.shutdown.set()
            await asyncio.wait_for(self.task, 60)
        if self.worker_conn is not None:
            await self.worker_conn.close()
        self.manager = self.task = self.worker_conn = None

    async def completed(self, n: int) -> int:
        return n - int(await self._scalar("SELECT count(*) FROM pgqueuer"))

    async def send_probes(self, count: int, rate: float) -> dict[int, float]:
        return await _elsewhere(Probes("pgqueuer", self.conninfo, count, rate, driver=self.driver))


class Procrastinate(PostgresQueue):
    """procrastinate (psycopg connector); a worker at `concurrency` = the batch."""

    table = "procrastinate_jobs"

    def __init__(self, name: str, conninfo: str) -> None:
        super().__init__(name, conninfo)
        self.app = procrastinate_app(conninfo)
        self.task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await super().open()
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()

    async def close(self) -> None:
        await self.app.close_async()
        await super().close()

    async def reset(self) -> None:
        await self._execute("TRUNCATE procrastinate_jobs, procrastinate_workers CASCADE")

    async def enqueue_bulk(self, n: int) -> None:
        await self.app.tasks["bench_noop"].batch_defer_async(*([{}] * n))

    async def start(self, batch: int) -> None:
        self.task = asyncio.create_task(
            self.app.run_worker_async(concurrency=batch, install_signal_handlers=False)
        )

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 60)
        self.task = None

    async def completed(self, n: int) -> int:
        query = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        return int(await self._scalar(query))

    async def send_probes(self, count: int, rate: float) -> dict[int, float]:
        return await _elsewhere(Probes("procrastinate", self.conninfo, count, rate))


Queue = Keel | PgQueuer | Procrastinate


# --- measurements ------------------------------------------------------------------------------
@dataclass
class DrainSample:
    case: str
    round: int
    enqueue_per_s: float
    drain_per_s: float
    done: int
    seconds: float
    capped: bool


async def drain(queue: Queue, case: str, rnd: int, batch: int, args: Any) -> DrainSample:
    """Bulk-enqueue `args.jobs`, then time a worker until the database has them all done."""
    n = args.jobs
    await queue.reset()
    started = time.perf_counter()
    await queue.enqueue_bulk(n)
    enqueue_s = time.perf_counter() - started
    await queue.analyze()
    TALLY.reset()
    started = time.perf_counter()
    await queue.start(batch)
    try:
        while True:
            # The handlers count in-process; only then is the database asked (cheaply, rarely).
            await asyncio.sleep(0.05 if TALLY.done < n else 0.01)
            elapsed = time.perf_counter() - started
            if TALLY.done >= n and (done := await queue.completed(n)) >= n:
                elapsed = time.perf_counter() - started
                break
            if elapsed >= args.drain_cap:
                done = await queue.completed(n)
                break
    finally:
        await queue.stop()
    return DrainSample(case, rnd, n / enqueue_s, done / elapsed, done, elapsed, done < n)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def latency(queue: Queue, args: Any) -> dict[str, Any]:
    """Enqueue-to-start of single jobs sent one at a time to an idle worker."""
    await queue.reset()
    TALLY.reset()
    await queue.start(10)
    try:
        await asyncio.sleep(1.0)  # the worker is idle and waiting
        sent = await queue.send_probes(args.probes, args.probe_rate)
        for _ in range(100):  # at most 5 s for the last ones to start
            if all(seq in TALLY.starts for seq in sent):
                break
            await asyncio.sleep(0.05)
    finally:
        await queue.stop()
    observed = [(TALLY.starts[i] - t) * 1000 for i, t in sent.items() if i in TALLY.starts]
    result = {
        "probes": len(sent),
        "started": len(observed),
        "p50_ms": _pct(observed, 0.50),
        "p95_ms": _pct(observed, 0.95),
        "max_ms": max(observed, default=float("nan")),
    }
    if in_db := await queue.db_latencies():
        result |= {"db_p50_ms": _pct(in_db, 0.50), "db_p95_ms": _pct(in_db, 0.95)}
    return result


async def rescue(queue: Keel, args: Any, workdir: Path) -> dict[str, Any]:
    """SIGKILL a `keel worker` running long jobs; time until an idle worker re-claims them."""
    count, lease = 4, args.lease
    await queue.reset()
    async with queue.db.transaction() as session:
        await enqueue_many(session, "bench.sleep", [{"seconds": 600}] * count)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env |= {
        "KEEL_CONFIG_FILE": str(workdir / "no-keel.toml"),
        "KEEL_DATABASE_URL": queue.url,
        "KEEL_DATA_DIR": str(queue.data_dir),
        "KEEL_JOB_LEASE_SECONDS": str(lease),
    }
    if queue.db.dialect == "postgresql":
        env["KEEL_MASTER_KEY"] = MASTER_KEY
    log_path = workdir / f"worker-{queue.name}.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER.format(bench=str(BENCH_DIR)),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = select(func.count()).where(Job.state == JobState.RUNNING)
    try:
        for _ in range(600):  # at most 60 s for the worker to start and take the jobs
            async with queue.db.session() as session:
                if await session.scalar(running) == count or proc.returncode is not None:
                    break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("the keel worker did not take the jobs in 60 s")
        if proc.returncode is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the keel worker stopped:\n{tail}")
        await queue.start(10, lease=lease)  # the surviving worker, idle: every job is taken
        await asyncio.sleep(0.5)
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        started = time.perf_counter()
        reclaimed = running.where(Job.attempt >= 2)
        elapsed = float("nan")
        while time.perf_counter() - started < max(30.0, 6 * lease):
            async with queue.db.session() as session:
                if await session.scalar(reclaimed) == count:
                    elapsed = time.perf_counter() - started
                    break
            await asyncio.sleep(0.05)
        async with queue.db.session() as session:
            attempts = select(JobAttempt.attempt, JobAttempt.started_at, JobAttempt.finished_at)
            rows = list(await session.execute(attempts))
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
        await queue.stop()
    rescued = [f.timestamp() - killed_at for a, _s, f in rows if a == 1 and f is not None]
    claimed = [s.timestamp() - killed_at for a, s, _f in rows if a == 2]
    return {
        "jobs": count,
        "lease_s": lease,
        "reclaimed_s": elapsed,
        "rescued_max_s": max(rescued, default=float("nan")),
        "claimed_max_s": max(claimed, default=float("nan")),
        "meets": elapsed <= 2 * lease,
    }


# --- driver ------------------------------------------------------------------------------------
def summarize(samples: list[DrainSample]) -> dict[str, Any]:
    """Median per case, and Keel/baseline ratios of the medians."""
    median: dict[str, dict[str, Any]] = {}
    for case, _system, _batch in CASES:
        mine = [s for s in samples if s.case == case]
        if mine:
            median[case] = {
                "enqueue_per_s": statistics.median(s.enqueue_per_s for s in mine),
                "drain_per_s": statistics.median(s.drain_per_s for s in mine),
                "capped": any(s.capped for s in mine),
            }
    ratios = {
        name: {
            key: median[keel][key] / median[base][key] for key in ("enqueue_per_s", "drain_per_s")
        }
        for name, keel, base in RATIOS
        if keel in median and base in median
    }
    return {"samples": [vars(s) for s in samples], "median": median, "ratio": ratios}


async def measure(args: Any, workdir: Path) -> dict[str, Any]:
    """Set up every queue, run the drain rounds, the latency probes and the rescue."""
    if problem := await postgres_problem():
        raise SystemExit(f"PostgreSQL is not reachable ({problem}); set BENCH_POSTGRES_URL")
    databases = Databases()
    queues: dict[str, Queue] = {}
    results: dict[str, Any] = {}
    try:
        results["postgres"] = await open_queues(databases, queues, workdir, args.pgqueuer_driver)
        await run_all(args, workdir, queues, results)
    finally:
        for queue in queues.values():
            with contextlib.suppress(Exception):
                if isinstance(queue, Keel):
                    await queue.db.dispose()
                else:
                    await queue.close()
        await databases.drop()
        for pool in _SENDER:
            pool.shutdown(cancel_futures=True)
    return results


async def open_queues(
    databases: Databases, queues: dict[str, Queue], workdir: Path, driver: str
) -> str:
    """Create the databases and open every queue in `queues`; the server's version."""
    await databases.create()
    pg_url = databases.sqlalchemy_url("keel")
    sqlite_url = f"sqlite+aiosqlite:///{(workdir / 'sqlite' / 'keel.db').as_posix()}"
    queues["keel-pg"] = Keel(
        "keel-pg", await open_keel(pg_url, workdir / "pg"), pg_url, workdir / "pg"
    )
    queues["keel-sqlite"] = Keel(
        "keel-sqlite",
        await open_keel(sqlite_url, workdir / "sqlite"),
        sqlite_url,
        workdir / "sqlite",
    )
    await pgqueuer_setup(databases.conninfo("pgq"))
    queues["pgqueuer"] = PgQueuer("pgqueuer", databases.conninfo("pgq"), driver)
    queues["procrastinate"] = Procrastinate("procrastinate", databases.conninfo("proc"))
    for queue in queues.values():
        if not isinstance(queue, Keel):
            await queue.open()
    async with await psycopg.AsyncConnection.connect(databases.conninfo("pgq")) as conn:
        cursor = await conn.execute("SHOW server_version")
        return str(((await cursor.fetchone()) or ("?",))[0])


async def run_all(
    args: Any, workdir: Path, queues: dict[str, Queue], results: dict[str, Any]
) -> None:
    """The drain rounds, then enqueue-to-start, then the rescue."""
    cases = [c for c in CASES if not args.cases or c[0] in args.cases]
    samples: list[DrainSample] = []
    for rnd in range(1, args.rounds + 1):
        for case, system, batch in cases:
            sample = await drain(queues[system], case, rnd, batch, args)
            samples.append(sample)
            note = f" (capped at {sample.seconds:.1f} s)" if sample.capped else ""
            print(
                f"  round {rnd} {case:<18} enqueue {sample.enqueue_per_s:9,.0f}/s  "
                f"drain {sample.drain_per_s:8,.0f}/s  {sample.done:,} in "
                f"{sample.seconds:.2f} s{note}",
                file=sys.stderr,
            )
    results["drain"] = summarize(samples)

    results["latency"] = {}
    if not args.no_latency:
        for name in ("pgqueuer", "keel-pg", "procrastinate", "keel-sqlite"):
            print(f"enqueue-to-start: {name} ...", file=sys.stderr)
            results["latency"][name] = await latency(queues[name], args)
            lat = results["latency"][name]
            print(
                f"  {name:<14} p50 {lat['p50_ms']:.1f} ms  p95 {lat['p95_ms']:.1f} ms  "
                f"({lat['started']}/{lat['probes']} started)",
                file=sys.stderr,
            )
    results["rescue"] = {}
    if not args.no_rescue:
        for name in ("keel-pg", "keel-sqlite"):
            print(f"rescue after SIGKILL: {name} ...", file=sys.stderr)
            queue = queues[name]
            assert isinstance(queue, Keel)
            results["rescue"][name] = outcome = await rescue(queue, args, workdir)
            print(f"  {name:<14} re-claimed in {outcome['reclaimed_s']:.2f} s", file=sys.stderr)


async def _stoppable(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """`coro`, cancelled on SIGTERM or SIGINT so its clean-ups (workers, subprocess,
    databases) run on the loop instead of a SystemExit landing in whichever task runs."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await coro


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(_stoppable(coro))  # type: ignore[no-any-return, unused-ignore]
    return asyncio.run(_stoppable(coro))


def print_results(results: dict[str, Any], settings: dict[str, Any]) -> None:
    before, after = settings["loadavg_1min"]
    print(
        f"Durable jobs: Keel ({settings['keel_commit']}) vs pgqueuer "
        f"({settings['pgqueuer_driver']}) vs procrastinate  |  {settings['seconds']:g} s  |  "
        f"PostgreSQL {results['postgres']}"
    )
    print("  " + ", ".join(f"{k} {v}" for k, v in settings["versions"].items()))
    print(
        f"  python {settings['python']}, {settings['cpus']} CPUs, load average {before:g} at "
        f"start, {after:g} at end; {settings['jobs']:,} jobs x {settings['rounds']} rounds, "
        f"drain cap {settings['drain_cap']:g} s"
    )
    drain = results["drain"]
    print("\ndrain (bulk enqueue, then a worker until every job is done)")
    rounds = sorted({s["round"] for s in drain["samples"]})
    head = "".join(f"{'#' + str(r):>9}" for r in rounds)
    print(f"  {'case':<19}{'enqueue/s':>11}{'drain/s':>10}{head}   (drain/s per round)")
    for case, m in drain["median"].items():
        per_round = "".join(
            f"{s['drain_per_s']:>8,.0f}{'*' if s['capped'] else ' '}"
            for s in drain["samples"]
            if s["case"] == case
        )
        print(f"  {case:<19}{m['enqueue_per_s']:>11,.0f}{m['drain_per_s']:>10,.0f}{per_round}")
    print("  (* capped: the rate of the jobs done within the cap)")
    for name, ratio in drain["ratio"].items():
        print(
            f"  {name:<31} drain {ratio['drain_per_s']:7.3f}  enqueue {ratio['enqueue_per_s']:6.3f}"
        )
    median = drain["median"]
    verdicts = []
    # The targets: at each batch size at least pgqueuer's drain; Keel's best drain at
    # least 5,000/s on PostgreSQL and 3,000/s on SQLite.
    for batch in (10, 100):
        keel, base = median.get(f"keel-pg-b{batch}"), median.get(f"pgqueuer-b{batch}")
        if keel and base:
            ok = keel["drain_per_s"] >= base["drain_per_s"]
            verdicts.append(
                f"keel-pg b{batch} drain {keel['drain_per_s']:,.0f}/s "
                f"{'meets' if ok else 'MISSES'} target >= pgqueuer ({base['drain_per_s']:,.0f})"
            )
    for system, target in (("keel-pg", TARGET_PG_DRAIN), ("keel-sqlite", TARGET_SQLITE_DRAIN)):
        runs = {case: m for case, m in median.items() if case.startswith(f"{system}-b")}
        if runs:
            case, best = max(runs.items(), key=lambda item: item[1]["drain_per_s"])
            ok = best["drain_per_s"] >= target
            verdicts.append(
                f"{system} best drain {best['drain_per_s']:,.0f}/s ({case}) "
                f"{'meets' if ok else 'MISSES'} target >= {target:,.0f}"
            )
    if results["latency"]:
        print("\nenqueue-to-start (single jobs to an idle worker, ms)")
        print(f"  {'queue':<15}{'p50':>8}{'p95':>8}{'max':>8}{'db p50':>9}{'db p95':>9}  started")
        for name, lat in results["latency"].items():
            nan = float("nan")
            db = f"{lat.get('db_p50_ms', nan):>9.1f}{lat.get('db_p95_ms', nan):>9.1f}"
            print(
                f"  {name:<15}{lat['p50_ms']:>8.1f}{lat['p95_ms']:>8.1f}{lat['max_ms']:>8.1f}"
                f"{db}  {lat['started']}/{lat['probes']}"
            )
        if keel := results["latency"].get("keel-pg"):
            ok = keel["p95_ms"] <= TARGET_P95_MS
            verdicts.append(
                f"keel-pg enqueue-to-start p95 {keel['p95_ms']:.1f} ms "
                f"{'meets' if ok else 'MISSES'} target <= {TARGET_P95_MS:g} ms"
            )
    if results["rescue"]:
        print("\nrescue after SIGKILL (s from the kill; lease as given)")
        print(f"  {'queue':<15}{'lease':>7}{'back in queue':>15}{'re-claimed':>12}")
        for name, res in results["rescue"].items():
            print(
                f"  {name:<15}{res['lease_s']:>7g}{res['rescued_max_s']:>15.2f}"
                f"{res['reclaimed_s']:>12.2f}"
            )
            verdicts.append(
                f"{name} rescue {res['reclaimed_s']:.2f} s "
                f"{'meets' if res['meets'] else 'MISSES'} target <= 2 x lease "
                f"({2 * res['lease_s']:g} s)"
            )
    print("\ntargets")
    for line in verdicts:
        print(f"  {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument("--jobs", type=int, help="jobs per drain (20000)")
    parser.add_argument("--rounds", type=int, help="drain rounds, cases alternating (3)")
    parser.add_argument("--drain-cap", type=float, help="seconds a drain may take at most (15)")
    parser.add_argument("--probes", type=int, help="enqueue-to-start probes per queue (150)")
    parser.add_argument("--probe-rate", type=float, help="probes per second (25)")
    parser.add_argument("--lease", type=float, default=2.0, help="rescue: lease seconds (2)")
    parser.add_argument(
        "--pgqueuer-driver",
        choices=("asyncpg", "psycopg"),
        default=pgqueuer_driver_name(),
        help="pgqueuer's driver (default asyncpg when installed)",
    )
    parser.add_argument("--cases", help="only these drain cases (comma-separated)")
    parser.add_argument("--no-latency", action="store_true", help="skip enqueue-to-start")
    parser.add_argument("--no-rescue", action="store_true", help="skip the rescue")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.cases = [c.strip() for c in args.cases.split(",")] if args.cases else []
    unknown = set(args.cases) - {c[0] for c in CASES}
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose from {[c[0] for c in CASES]}")

    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-jobs-"))
    for name in [k for k in os.environ if k.startswith("KEEL_")]:
        del os.environ[name]
    os.environ["KEEL_CONFIG_FILE"] = str(workdir / "no-keel.toml")  # ignore any keel.toml
    head = subprocess.run(  # the commit measured (others may commit during the run)
        ["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    commit = head.stdout.strip() or "?"
    started = time.monotonic()
    load_before = os.getloadavg()[0]  # other work on the machine skews every figure
    try:
        results = _run(measure(args, workdir))
    except asyncio.CancelledError:  # SIGTERM or Ctrl-C: everything is cleaned up by now
        print("stopped; workers stopped and databases dropped", file=sys.stderr)
        return 143
    finally:
        if args.keep_logs:
            print(f"logs and SQLite data kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    packages = ("keel-server", "sqlalchemy", "psycopg", "aiosqlite", "pgqueuer", "procrastinate")
    if args.pgqueuer_driver == "asyncpg":
        packages += ("asyncpg",)
    settings = {
        "keel_commit": commit,
        "python": sys.version.split()[0],
        "versions": {pkg: version(pkg) for pkg in (*packages, "uvloop")},
        "cpus": os.cpu_count(),
        "seconds": round(time.monotonic() - started, 1),
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **{k: v for k, v in vars(args).items() if k not in ("json", "keep_logs")},
    }
    if args.json:
        print(json.dumps({"settings": settings, **results}, indent=2))
        return 0
    print_results(results, settings)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
