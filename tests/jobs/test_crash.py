"""The crash test: worker processes are SIGKILLed at random points while running jobs; a
last worker then finishes everything, nothing is lost and no effect is committed twice."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import func, select

from keel import Config
from keel.core.database import Database
from keel.jobs import enqueue_many
from keel.jobs.models import Job, JobAttempt, JobState
from tests.conftest import TEST_MASTER_KEY
from tests.jobs.crash_jobs import LEDGER
from tests.test_serve import free_port

ROOT = Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("KEEL_TEST_CRASH_KILLS", "20"))
JOBS = 300  # enough work that every one of the kills finds jobs to interrupt
WORKER = (
    "import sys; sys.path.insert(0, {root!r}); import tests.jobs.crash_jobs; "
    "from keel.cli import main; sys.argv = ['keel', 'worker', '--concurrency', '8']; main()"
)


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER.format(root=str(ROOT))],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_kill_9_loses_no_job_and_commits_no_effect_twice(
    config: Config, tmp_path: Path
) -> None:
    """20 workers are killed with SIGKILL at random moments mid-run; a last one drains the
    queue. Every job ends completed, and the ledger holds exactly one row per job."""
    db = Database(config)
    from keel.core.migrate import upgrade

    await upgrade(db)
    async with db.engine.begin() as connection:
        await connection.run_sync(LEDGER.create)
    async with db.transaction() as session:
        await enqueue_many(session, "crash.ledger", [{"n": n} for n in range(JOBS)])
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": config.effective_database_url,
        "KEEL_DATA_DIR": str(tmp_path / "data"),
        "KEEL_MASTER_KEY": TEST_MASTER_KEY,
        "KEEL_JOB_LEASE_SECONDS": "1",
        "KEEL_LOG_LEVEL": "warning",
        "KEEL_CONFIG_FILE": str(tmp_path / "absent.toml"),
    }
    rng = random.Random(7)
    kills = working = 0
    try:
        for _ in range(KILLS):
            spawned = datetime.now(UTC)
            process = _worker(env)
            # Kill at a random moment once it is really working, whatever the machine's speed:
            # between 0 and 0.3 s after its first claim (a loaded machine can take many
            # seconds to start a Python process).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and process.poll() is None:
                async with db.session() as session:
                    busy = await session.scalar(
                        select(func.count())
                        .select_from(JobAttempt)
                        .where(JobAttempt.started_at > spawned)
                    )
                if busy:
                    working += 1
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            kills += 1
        last = _worker(env)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                async with db.session() as session:
                    open_jobs = await session.scalar(
                        select(func.count()).select_from(Job).where(Job.state != JobState.COMPLETED)
                    )
                if open_jobs == 0:
                    break
                await asyncio.sleep(0.25)
        finally:
            last.send_signal(signal.SIGTERM)
            last.wait(timeout=30)
        async with db.session() as session:
            states = dict(
                (await session.execute(select(Job.state, func.count()).group_by(Job.state))).all()
            )
            per_job = (
                await session.execute(
                    select(LEDGER.c.job_id, func.count()).group_by(LEDGER.c.job_id)
                )
            ).all()
            lost = await session.scalar(
                select(func.count())
                .select_from(JobAttempt)
                .where(JobAttempt.failure_class == "worker_lost")
            )
        assert kills == KILLS
        assert working == KILLS, "every kill should interrupt a worker that had claimed jobs"
        assert states == {JobState.COMPLETED: JOBS}
        assert len(per_job) == JOBS and {count for _job, count in per_job} == {1}
        assert (lost or 0) > 0, "the kills should have left leases to rescue"
    finally:
        await db.dispose()


SERVE = (
    "import sys; sys.path.insert(0, {root!r}); import tests.jobs.crash_jobs; "
    "from keel.cli import main; sys.argv = ['keel', 'serve', '--port', '{port}']; main()"
)


def _serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE.format(root=str(ROOT), port=port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "keel serve exited early"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("keel serve did not come up")


async def test_keel_serve_killed_mid_job_finishes_it_after_a_restart(
    config: Config, tmp_path: Path
) -> None:
    """`keel serve` runs a job in process; killed with SIGKILL in the middle of it and started
    again, it rescues the job and finishes it."""
    db = Database(config)
    from keel.core.migrate import upgrade

    await upgrade(db)
    async with db.transaction() as session:
        (job_id,) = await enqueue_many(session, "crash.slow", [{"seconds": 2.0}])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")},
        "KEEL_DATABASE_URL": config.effective_database_url,
        "KEEL_DATA_DIR": str(tmp_path / "data"),
        "KEEL_MASTER_KEY": TEST_MASTER_KEY,
        "KEEL_JOB_LEASE_SECONDS": "2",
        "KEEL_LOG_LEVEL": "warning",
        "KEEL_CONFIG_FILE": str(tmp_path / "absent.toml"),
    }
    try:
        first = _serve(env, free_port())
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                async with db.session() as session:
                    job = await session.get(Job, job_id)
                    if job is not None and job.state == JobState.RUNNING and job.progress_done:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the job never started")
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        second = _serve(env, free_port())
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                async with db.session() as session:
                    job = await session.get(Job, job_id)
                    assert job is not None
                    if job.state == JobState.COMPLETED:
                        break
                await asyncio.sleep(0.2)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
        assert job.state == JobState.COMPLETED and job.result == "finished"
        assert job.attempt == 2
    finally:
        await db.dispose()
