"""The queue on both dialects: enqueue in the caller's transaction, validation, idempotency,
running, retries, fencing, rescue, cancel, retry, shutdown and exactly-once effects."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, update

from keel.core.database import Database
from keel.core.errors import ValidationFailed
from keel.jobs import JobContext, Permanent, Transient, Worker, cancel, enqueue, job, retry
from keel.jobs.models import Job, JobAttempt, JobLog, JobState
from keel.jobs.service import claim, complete, rescue

LEDGER = Table(
    "test_job_ledger",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36)),
    Column("note", String(100)),
)
RUNS: dict[str, int] = {}


@job("test.add", max_attempts=3)
async def add(ctx: JobContext, a: int, b: int = 1) -> int:
    ctx.progress(1, 2, "adding")
    ctx.log.info(f"adding {a} and {b}")  # noqa: G004 - the job's stored log, not logging
    return a + b


@job("test.flaky", max_attempts=3, backoff_base=0.01, backoff_cap=0.02)
async def flaky(ctx: JobContext, fail_times: int) -> str:
    RUNS[ctx.job_id] = RUNS.get(ctx.job_id, 0) + 1
    if ctx.attempt <= fail_times:
        raise Transient("not yet", retry_after=0)
    return "ok"


@job("test.broken")
async def broken(ctx: JobContext) -> None:
    raise Permanent("this input can never work")


@job("test.slow", timeout=0.2, max_attempts=1)
async def slow(ctx: JobContext) -> None:
    await asyncio.sleep(5)


@job("test.cancellable")
async def cancellable(ctx: JobContext) -> None:
    await ctx.wait_cancelled()
    raise asyncio.CancelledError


@job("test.ledger")
async def ledger(ctx: JobContext, note: str) -> None:
    async def write(session: Any) -> None:
        await session.execute(LEDGER.insert().values(job_id=ctx.job_id, note=note))

    await ctx.once("ledger", write)


@job("test.sync")
def sync_job(ctx: JobContext, n: int) -> int:
    return n * 2


@pytest.fixture
async def db(migrated_db: Database) -> Database:
    async with migrated_db.engine.begin() as connection:
        await connection.run_sync(LEDGER.create)
    return migrated_db


async def _enqueue(db: Database, kind: str, args: dict[str, Any] | None = None, **more: Any) -> str:
    async with db.transaction() as session:
        return (await enqueue(session, kind, args or {}, **more)).id


async def _job(db: Database, job_id: str) -> Job:
    async with db.session() as session:
        found = await session.get(Job, job_id)
        assert found is not None
        return found


async def _until(db: Database, job_id: str, *states: str, timeout: float = 10.0) -> Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await _job(db, job_id)
        if found.state in states:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"{found.state} not in {states}"
        await asyncio.sleep(0.05)


class running:  # noqa: N801 - used as `async with running(db)`
    """A worker running in the background for the duration of a `with` block."""

    def __init__(self, db: Database, **options: Any) -> None:
        options.setdefault("poll_interval", 0.05)
        options.setdefault("lease", 3.0)
        self.worker = Worker(db, **options)

    async def __aenter__(self) -> Worker:
        self.task = asyncio.create_task(self.worker.run())
        return self.worker

    async def __aexit__(self, *exc: object) -> None:
        self.worker.stop()
        await asyncio.wait_for(self.task, timeout=20)


async def test_a_job_exists_iff_its_transaction_commits(db: Database) -> None:
    """Enqueue joins the caller's transaction both ways."""

    async def failing_caller() -> None:
        async with db.transaction() as session:
            await enqueue(session, "test.add", {"a": 1})
            raise RuntimeError("the caller failed")

    with pytest.raises(RuntimeError):
        await failing_caller()
    await _enqueue(db, "test.add", {"a": 1})
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 1


@pytest.mark.parametrize(
    ("kind", "args", "pointer"),
    [
        ("test.add", {"a": "not a number"}, "/args/a"),
        ("test.add", {}, "/args/a"),
        ("test.add", {"a": 1, "c": 2}, "/args/c"),
        ("nope.kind", {}, None),
    ],
)
async def test_bad_arguments_fail_at_enqueue(
    db: Database, kind: str, args: dict[str, Any], pointer: str | None
) -> None:
    """Arguments are checked against the function's type hints when enqueued, never later."""
    with pytest.raises(ValidationFailed) as caught:
        await _enqueue(db, kind, args)
    if pointer is not None:
        assert caught.value.errors and caught.value.errors[0]["pointer"] == pointer
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 0


async def test_idempotency_key_returns_the_existing_job(db: Database) -> None:
    """A duplicate enqueue with the same key returns the unfinished job; once it finished, a
    new one is made unless the time window still covers it."""
    first = await _enqueue(db, "test.add", {"a": 1}, idempotency_key="k1")
    assert await _enqueue(db, "test.add", {"a": 2}, idempotency_key="k1") == first
    async with running(db):
        await _until(db, first, JobState.COMPLETED)
    again = await _enqueue(db, "test.add", {"a": 1}, idempotency_key="k1")
    assert again != first
    async with db.transaction() as session:
        windowed = await enqueue(
            session, "test.add", {"a": 1}, idempotency_key="k1", unique_window=timedelta(hours=1)
        )
    assert windowed.id in (first, again)


async def test_a_job_runs_with_progress_logs_and_result(db: Database) -> None:
    """The worker runs the job: result, progress, log lines and one attempt row."""
    job_id = await _enqueue(db, "test.add", {"a": 40, "b": 2})
    sync_id = await _enqueue(db, "test.sync", {"n": 21})
    async with running(db):
        done = await _until(db, job_id, JobState.COMPLETED)
        assert (await _until(db, sync_id, JobState.COMPLETED)).result == 42
    assert done.result == 42 and done.progress_message == "adding" and done.attempt == 1
    async with db.session() as session:
        lines = list(await session.scalars(select(JobLog.message).where(JobLog.job_id == job_id)))
        attempts = list(
            await session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id))
        )
    assert lines == ["adding 40 and 2"]
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "completed")]


async def test_transient_failures_retry_then_discard(db: Database) -> None:
    """Transient failures retry with backoff; out of attempts the job is discarded; every
    attempt keeps its error."""
    recovers = await _enqueue(db, "test.flaky", {"fail_times": 2})
    gives_up = await _enqueue(db, "test.flaky", {"fail_times": 5})
    permanent = await _enqueue(db, "test.broken")
    async with running(db):
        assert (await _until(db, recovers, JobState.COMPLETED)).attempt == 3
        assert (await _until(db, gives_up, JobState.DISCARDED)).attempt == 3
        broken_job = await _until(db, permanent, JobState.DISCARDED)
    assert broken_job.attempt == 1 and "never work" in (broken_job.last_error or "")
    async with db.session() as session:
        classes = list(
            await session.scalars(
                select(JobAttempt.failure_class).where(JobAttempt.job_id == gives_up)
            )
        )
    assert classes == ["transient"] * 3


async def test_a_timeout_is_its_own_failure_class(db: Database) -> None:
    """A job running past its timeout fails with class `timeout`."""
    job_id = await _enqueue(db, "test.slow")
    async with running(db):
        await _until(db, job_id, JobState.DISCARDED)
    async with db.session() as session:
        assert (
            await session.scalar(
                select(JobAttempt.failure_class).where(JobAttempt.job_id == job_id)
            )
            == "timeout"
        )


async def test_a_worker_that_lost_its_lease_cannot_complete(db: Database) -> None:
    """Fencing: once the lease expired and the job was rescued and claimed again, the first
    attempt's completion is refused and the second's stands."""
    job_id = await _enqueue(db, "test.add", {"a": 1})
    (first,) = await claim(
        db, queues=["default"], limit=1, worker_id="w1", lease=timedelta(seconds=30)
    )
    async with db.transaction() as session:
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert await rescue(db) == 1
    assert (await _job(db, job_id)).state == JobState.RETRYABLE
    (second,) = await claim(
        db, queues=["default"], limit=1, worker_id="w2", lease=timedelta(seconds=30)
    )
    assert second.attempt == 2
    assert not await complete(db, job_id, first.attempt, str(first.lease_token), result="stale")
    assert await complete(db, job_id, second.attempt, str(second.lease_token), result="fresh")
    finished = await _job(db, job_id)
    assert finished.state == JobState.COMPLETED and finished.result == "fresh"
    async with db.session() as session:
        outcomes = list(
            await session.scalars(
                select(JobAttempt.failure_class)
                .where(JobAttempt.job_id == job_id)
                .order_by(JobAttempt.attempt)
            )
        )
    assert outcomes == ["worker_lost", None]


async def test_cancel_and_retry(db: Database) -> None:
    """A queued job cancels at once; a running one is asked and stops; both can be retried."""
    queued = await _enqueue(db, "test.add", {"a": 1}, run_at=datetime.now(UTC) + timedelta(hours=1))
    async with db.transaction() as session:
        assert (await cancel(session, queued)).state == JobState.CANCELLED
    running_id = await _enqueue(db, "test.cancellable")
    async with running(db, lease=1.0):
        await _until(db, running_id, JobState.RUNNING)
        async with db.transaction() as session:
            assert (await cancel(session, running_id)).state == JobState.CANCELLING
        await _until(db, running_id, JobState.CANCELLED)
        async with db.transaction() as session:
            await retry(session, queued)
        assert (await _until(db, queued, JobState.COMPLETED)).result == 2
    async with db.transaction() as session:
        from keel.core.errors import Conflict

        with pytest.raises(Conflict):
            await cancel(session, queued)


async def test_shutdown_gives_running_jobs_back(db: Database) -> None:
    """A job still running when the grace period ends is released at once: available again,
    the interrupted attempt not counted."""
    job_id = await _enqueue(db, "test.cancellable")
    async with running(db, grace=0.2):
        await _until(db, job_id, JobState.RUNNING)
    released = await _job(db, job_id)
    assert released.state == JobState.AVAILABLE and released.attempt == 0
    assert released.lease_token is None


async def test_effects_commit_exactly_once_across_rescues(db: Database) -> None:
    """Jobs using `ctx.once` leave exactly one ledger row each, even when their first worker
    lost the lease after writing (the rescue runs them again)."""
    ids = [await _enqueue(db, "test.ledger", {"note": f"n{i}"}) for i in range(20)]
    async with running(db, concurrency=5):
        for job_id in ids:
            await _until(db, job_id, JobState.COMPLETED)
    async with db.transaction() as session:
        for job_id in ids[:5]:
            await session.execute(
                update(Job).where(Job.id == job_id).values(state=JobState.AVAILABLE)
            )
    async with running(db, concurrency=5):
        for job_id in ids[:5]:
            await _until(db, job_id, JobState.COMPLETED)
    async with db.session() as session:
        rows = (
            await session.execute(select(LEDGER.c.job_id, func.count()).group_by(LEDGER.c.job_id))
        ).all()
    assert sorted(rows) == sorted((job_id, 1) for job_id in ids)


async def test_many_workers_run_each_job_once(db: Database) -> None:
    """Three workers on separate engines drain 60 jobs: each runs exactly once."""
    ids = [await _enqueue(db, "test.ledger", {"note": "x"}) for _ in range(60)]
    others = [Database(db.config), Database(db.config)]
    try:
        async with (
            running(db, concurrency=4),
            running(others[0], concurrency=4),
            running(others[1], concurrency=4),
        ):
            for job_id in ids:
                await _until(db, job_id, JobState.COMPLETED, timeout=30)
    finally:
        for other in others:
            await other.dispose()
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(LEDGER)) == 60
        assert await session.scalar(select(func.max(Job.attempt))) == 1


NAPPING = {"now": 0, "peak": 0}


@job("test.napping", queue="narrow")
async def napping(ctx: JobContext) -> None:
    NAPPING["now"] += 1
    NAPPING["peak"] = max(NAPPING["peak"], NAPPING["now"])
    try:
        await asyncio.sleep(0.3)
    finally:
        NAPPING["now"] -= 1


async def test_a_queue_limit_caps_its_running_jobs(db: Database) -> None:
    """`narrow:1` runs one handler of that queue at a time, while other queues use the rest.
    (The database may show a second one `running` for the few milliseconds its completion
    waits to be written with others: the limit is on handlers, not on that write.)"""
    NAPPING.update(now=0, peak=0)
    ids = [await _enqueue(db, "test.napping") for _ in range(3)]
    others = [await _enqueue(db, "test.add", {"a": n}) for n in range(4)]
    async with running(db, queues=["narrow:1", "default"], concurrency=5):
        for job_id in ids + others:
            await _until(db, job_id, JobState.COMPLETED, timeout=10)
    assert NAPPING["peak"] == 1
    for job_id in ids + others:
        assert (await _job(db, job_id)).state == JobState.COMPLETED
    with pytest.raises(ValueError, match="positive integer"):
        Worker(db, queues=["narrow:zero"])


async def test_an_enqueue_wakes_an_idle_worker_at_once(db: Database) -> None:
    """With polling every 30 s, a job still starts within a second of its commit: LISTEN/NOTIFY
    on PostgreSQL (from another engine), the in-process signal on SQLite."""
    other = Database(db.config)
    try:
        async with running(db, poll_interval=30.0):
            await asyncio.sleep(0.3)  # the worker is idle and waiting
            started = asyncio.get_running_loop().time()
            job_id = await _enqueue(
                other if db.dialect == "postgresql" else db, "test.add", {"a": 1}
            )
            await _until(db, job_id, JobState.COMPLETED, timeout=5)
            assert asyncio.get_running_loop().time() - started < 1.5
    finally:
        await other.dispose()


async def test_claims_under_load_never_hit_database_is_locked(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Four workers on four engines, eight jobs each at a time, hammer the queue with 400
    jobs: all complete, once each, and no claim, heartbeat or completion ever fails."""
    async with db.transaction() as session:
        from keel.jobs import enqueue_many

        await enqueue_many(session, "test.ledger", [{"note": "h"}] * 400)
    engines = [db, *(Database(db.config) for _ in range(3))]
    try:
        # The default 30 s lease: a loaded CI machine can take seconds per turn of SQLite's
        # write lock, and what is tested here is that no write ever fails.
        async with (
            running(engines[0], concurrency=8, lease=30.0),
            running(engines[1], concurrency=8, lease=30.0),
            running(engines[2], concurrency=8, lease=30.0),
            running(engines[3], concurrency=8, lease=30.0),
        ):
            for _ in range(600):
                async with db.session() as session:
                    left = await session.scalar(
                        select(func.count()).select_from(Job).where(Job.state != JobState.COMPLETED)
                    )
                if not left:
                    break
                await asyncio.sleep(0.05)
    finally:
        for engine in engines[1:]:
            await engine.dispose()
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(LEDGER)) == 400
        assert await session.scalar(select(func.max(Job.attempt))) == 1
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failures == []
