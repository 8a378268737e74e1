"""The batched hot path on both dialects: claims per queue, completions written many at a time
(each still fenced), heartbeats for many leases in one statement, and a shutdown that writes
what finished before it."""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from keel.core.database import Database
from keel.jobs import JobContext, Permanent, Worker, job
from keel.jobs.models import Job, JobAttempt, JobLog, JobState
from keel.jobs.service import Claimed, Done, Lease, claim, complete_many, heartbeat_many
from keel.jobs.worker import _Dedicated
from tests.jobs.test_queue import _enqueue, _job, _until, running

LEASE = timedelta(seconds=30)
SEEN: list[str] = []


@job("test.batch.noop", queue="alpha")
async def noop_alpha(ctx: JobContext) -> None:
    SEEN.append("alpha")


@job("test.batch.noop_beta", queue="beta")
async def noop_beta(ctx: JobContext) -> None:
    SEEN.append("beta")


@job("test.batch.result")
async def with_result(ctx: JobContext, n: int) -> dict[str, int]:
    await asyncio.sleep(0.2)
    return {"n": n}


async def _steal(db: Database, held: Claimed) -> None:
    """Another attempt takes the job over (what a rescue and a new claim amount to)."""
    async with db.transaction() as session:
        await session.execute(
            update(Job)
            .where(Job.id == held.id)
            .values(attempt=Job.attempt + 1, lease_token="someone-else")
        )


async def test_a_batch_of_completions_fences_each_job(migrated_db: Database) -> None:
    """Five completions in one batch: the one whose lease was taken over is refused and
    reported, the other four are stored with their results and attempts closed, on the
    transactional path and (PostgreSQL) the one-statement path on a kept connection."""
    db = migrated_db
    keeper = _Dedicated(db)
    try:
        for connection in {None, await keeper.get()}:
            ids = [await _enqueue(db, "test.add", {"a": n}) for n in range(5)]
            held = await claim(db, queues=["default"], limit=5, worker_id="w", lease=LEASE)
            assert sorted(h.id for h in held) == sorted(ids)
            await _steal(db, held[2])
            fenced = await complete_many(
                db,
                [Done(h.id, h.attempt, h.lease_token, {"n": i}) for i, h in enumerate(held)],
                connection=connection,
            )
            await keeper.done()
            assert fenced == {held[2].id}
            for i, h in enumerate(held):
                stored = await _job(db, h.id)
                if i == 2:
                    assert stored.state == JobState.RUNNING
                    assert stored.lease_token == "someone-else"
                else:
                    assert stored.state == JobState.COMPLETED
                    assert stored.result == {"n": i}
                    assert stored.lease_token is None
            async with db.session() as session:
                closed = await session.scalar(
                    select(func.count()).where(
                        JobAttempt.job_id.in_(ids), JobAttempt.outcome == "completed"
                    )
                )
            assert closed == 4
    finally:
        await keeper.close()


async def test_bad_batches_change_nothing(migrated_db: Database) -> None:
    """An empty batch writes nothing; a batch whose every fence is wrong stores nothing."""
    db = migrated_db
    assert await complete_many(db, []) == set()
    job_id = await _enqueue(db, "test.add", {"a": 1})
    (held,) = await claim(db, queues=["default"], limit=1, worker_id="w", lease=LEASE)
    forged = [
        Done(job_id, held.attempt, "not-the-token"),
        Done(job_id, held.attempt + 1, held.lease_token),
        Done("no-such-job", 1, held.lease_token),
    ]
    assert await complete_many(db, forged) == {job_id, "no-such-job"}
    assert (await _job(db, job_id)).state == JobState.RUNNING


async def test_one_heartbeat_statement_serves_many_leases(migrated_db: Database) -> None:
    """Held leases are extended and their progress written; a lost lease is reported as not
    owned and left alone; a job being cancelled is reported as such."""
    db = migrated_db
    for n in range(3):
        await _enqueue(db, "test.add", {"a": n})
    held = await claim(db, queues=["default"], limit=3, worker_id="w", lease=LEASE)
    await _steal(db, held[0])
    async with db.transaction() as session:
        await session.execute(
            update(Job).where(Job.id == held[1].id).values(state=JobState.CANCELLING)
        )
    before = datetime.now(UTC)
    beats = await heartbeat_many(
        db,
        [Lease(h.id, h.attempt, h.lease_token, (5, 10, "half")) for h in held],
        lease=timedelta(minutes=10),
    )
    assert not beats[held[0].id].owned
    assert beats[held[1].id].owned and beats[held[1].id].cancel_requested
    assert beats[held[2].id].owned and not beats[held[2].id].cancel_requested
    lost, cancelling, running_ = [await _job(db, h.id) for h in held]
    assert lost.progress_done is None
    assert cancelling.progress_message == "half"
    assert running_.progress_done == 5 and running_.progress_total == 10
    assert running_.lease_expires_at is not None
    assert running_.lease_expires_at > before + timedelta(minutes=9)


async def test_backlogged_queues_take_turns(migrated_db: Database) -> None:
    """A worker serving two backlogged queues with one slot alternates between them rather
    than draining the first before touching the second."""
    db = migrated_db
    SEEN.clear()
    for _ in range(6):
        await _enqueue(db, "test.batch.noop")
        await _enqueue(db, "test.batch.noop_beta")
    async with running(db, queues=["alpha", "beta"], concurrency=1):
        deadline = asyncio.get_running_loop().time() + 10
        while len(SEEN) < 12:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    assert "beta" in SEEN[:4] and "alpha" in SEEN[:4]


async def test_shutdown_writes_the_completions_of_finished_jobs(migrated_db: Database) -> None:
    """Jobs that finish during the shutdown's grace period are recorded completed (with their
    results) before the worker exits, not left to a lease expiry and a second run."""
    db = migrated_db
    ids = [await _enqueue(db, "test.batch.result", {"n": n}) for n in range(4)]
    worker = Worker(db, concurrency=4, poll_interval=0.05, lease=30.0, grace=5.0)
    task = asyncio.create_task(worker.run())
    for job_id in ids:
        await _until(db, job_id, JobState.RUNNING, JobState.COMPLETED)
    worker.stop()
    await asyncio.wait_for(task, timeout=20)
    for n, job_id in enumerate(ids):
        stored = await _job(db, job_id)
        assert stored.state == JobState.COMPLETED
        assert stored.result == {"n": n}
        assert stored.attempt == 1


class Unshowable:
    """Neither JSON nor text: its str() and repr() raise."""

    def __str__(self) -> str:
        raise RuntimeError("no text for this one")

    __repr__ = __str__


@job("test.batch.odd")
async def odd_result(ctx: JobContext, kind: str) -> object:
    if kind == "unshowable":
        return {"thing": Unshowable()}
    if kind == "nan":
        return float("nan")
    if kind == "nested":
        return {"when": datetime(2026, 1, 2, tzinfo=UTC), "ok": [1, 2]}
    return {"n": 1}


async def test_an_odd_result_does_not_fail_its_batch(migrated_db: Database) -> None:
    """Results that are not JSON (NaN, a datetime inside a dict) are stored as text in their
    place, one that cannot even be shown as text as a placeholder; the jobs completed in the
    same batch are unaffected."""
    db = migrated_db
    ids = {
        kind: await _enqueue(db, "test.batch.odd", {"kind": kind})
        for kind in ("nan", "nested", "plain", "unshowable")
    }
    async with running(db, concurrency=3):
        for job_id in ids.values():
            await _until(db, job_id, JobState.COMPLETED)
    assert (await _job(db, ids["nan"])).result == "nan"
    assert (await _job(db, ids["nested"])).result == {
        "when": "2026-01-02 00:00:00+00:00",
        "ok": [1, 2],
    }
    assert (await _job(db, ids["plain"])).result == {"n": 1}
    assert (await _job(db, ids["unshowable"])).result == "<dict result that cannot be shown>"
    for job_id in ids.values():
        assert (await _job(db, job_id)).attempt == 1


async def test_a_claim_batch_caps_each_claim_but_not_the_concurrency(
    migrated_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `claim_batch=3` and 8 slots, no claim asks for more than 3 jobs, yet the worker
    keeps claiming while jobs run until more than 3 run at once."""
    import keel.jobs.worker as worker_module

    db = migrated_db
    asked: list[int] = []
    real_claim = worker_module.claim

    async def spy(*args: Any, **kwargs: Any) -> list[Claimed]:
        asked.append(kwargs["limit"])
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(worker_module, "claim", spy)
    ids = [await _enqueue(db, "test.batch.result", {"n": n}) for n in range(9)]
    async with running(db, concurrency=8, claim_batch=3):
        most = 0
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            async with db.session() as session:
                states = list(await session.scalars(select(Job.state).where(Job.id.in_(ids))))
            most = max(most, states.count(JobState.RUNNING))
            if all(state == JobState.COMPLETED for state in states):
                break
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
    assert asked and max(asked) <= 3
    assert most > 3


def test_a_claim_batch_must_be_positive(migrated_db: Database) -> None:
    with pytest.raises(ValueError, match="claim_batch"):
        Worker(migrated_db, concurrency=4, claim_batch=0)


RUNS: list[str] = []


@job("test.batch.once", max_attempts=1)
async def run_once(ctx: JobContext) -> str:
    RUNS.append(ctx.job_id)
    return "done"


async def test_a_failed_completion_write_is_retried_not_lost(
    migrated_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first write of a batch fails (a dropped connection, say): the batch is kept and
    written again, so a job that succeeded on its only attempt ends completed, not rescued
    as `worker_lost` and discarded."""
    import keel.jobs.worker as worker_module

    db = migrated_db
    real = worker_module.complete_many
    failures = []

    async def flaky(*args: Any, **kwargs: Any) -> set[str]:
        if not failures:
            failures.append(1)
            raise ConnectionError("server closed the connection unexpectedly")
        return await real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "complete_many", flaky)
    RUNS.clear()
    job_id = await _enqueue(db, "test.batch.once")
    async with running(db, concurrency=2, lease=1.0):
        done = await _until(db, job_id, JobState.COMPLETED, JobState.DISCARDED, timeout=10)
        await asyncio.sleep(1.5)  # past a lease: the pending completion was heartbeated
    assert failures and done.state == JobState.COMPLETED and done.result == "done"
    assert [job_id] == RUNS
    assert (await _job(db, job_id)).state == JobState.COMPLETED


async def test_jobs_claimed_before_a_failing_queue_claim_still_run(
    migrated_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each queue's claim commits by itself: when the second queue's claim fails, the jobs
    the first one leased are run, not orphaned until their lease expires."""
    import keel.jobs.worker as worker_module

    db = migrated_db
    real = worker_module.claim

    async def beta_fails(*args: Any, **kwargs: Any) -> list[Claimed]:
        if kwargs["queues"] == ["beta"]:
            raise ConnectionError("lost the connection")
        return await real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "claim", beta_fails)
    job_id = await _enqueue(db, "test.batch.noop")  # queue alpha
    async with running(db, queues=["alpha", "beta"], concurrency=2, lease=30.0):
        done = await _until(db, job_id, JobState.COMPLETED, timeout=3)
    assert done.attempt == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_cancel_waits_for_a_completion_in_flight(migrated_db: Database) -> None:
    """An operator's cancel locks the job first: a completion committing meanwhile is seen
    (the cancel is refused) instead of being overwritten with `cancelling`."""
    from keel.core.errors import Conflict
    from keel.jobs.service import cancel

    db = migrated_db
    job_id = await _enqueue(db, "test.add", {"a": 1})
    (held,) = await claim(db, queues=["default"], limit=1, worker_id="w", lease=LEASE)
    async with db.transaction() as completing:
        await completing.execute(
            update(Job).where(Job.id == held.id).values(state=JobState.COMPLETED)
        )

        async def operator() -> None:
            async with db.transaction() as session:
                await cancel(session, job_id)

        # Another request's transaction: a task with its own context.
        attempt = asyncio.create_task(operator(), context=contextvars.Context())
        await asyncio.sleep(0.3)
        assert not attempt.done(), "the cancel waits for the row"
    with pytest.raises(Conflict):
        await attempt
    assert (await _job(db, job_id)).state == JobState.COMPLETED


HOLD: dict[str, asyncio.Event] = {}


@job("test.batch.hold")
async def held(ctx: JobContext, quick: bool) -> None:
    if quick:
        raise Permanent("fails at once")  # a failure's write does not pass the flusher
    await HOLD["release"].wait()


async def test_a_slot_freed_under_a_backlog_is_refilled_without_waiting_for_the_poll(
    migrated_db: Database,
) -> None:
    """Four slots, a backlog: one quick job fails while three hold their slots. Its slot
    alone is too few to claim for at once, but it is refilled within moments, not after the
    30 s poll."""
    db = migrated_db
    HOLD["release"] = release = asyncio.Event()
    await _enqueue(db, "test.batch.hold", {"quick": True})
    for _ in range(3):
        await _enqueue(db, "test.batch.hold", {"quick": False})
    waiting = await _enqueue(db, "test.batch.hold", {"quick": True})
    try:
        async with running(db, concurrency=4, poll_interval=30.0, lease=30.0):
            await _until(db, waiting, JobState.DISCARDED, timeout=5.0)
            release.set()
    finally:
        release.set()


async def _running_rows(db: Database, ids: list[str]) -> list[Lease]:
    """Jobs in `running` with leases, inserted in the given order (on PostgreSQL that is
    their order in the heap, which a sequential scan follows)."""
    leases = [Lease(job_id, 1, f"token-{job_id}") for job_id in ids]
    expires = datetime.now(UTC) + LEASE
    async with db.transaction() as session:
        for item in leases:
            session.add(
                Job(
                    id=item.job_id,
                    kind="test.add",
                    queue="default",
                    args={"a": 1},
                    state=JobState.RUNNING,
                    attempt=1,
                    max_attempts=3,
                    lease_token=item.token,
                    lease_expires_at=expires,
                    run_at=expires - LEASE,
                    created_at=expires - LEASE,
                )
            )
            await session.flush()
    return leases


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_heartbeat_never_waits_for_a_row_lock(migrated_db: Database) -> None:
    """While another transaction holds one job's row (the worker's own completion batch, an
    operator's cancel), a heartbeat over all of them does not wait: it extends and writes the
    others, reports the held one owned but unwritten, and writes it on the next beat, so it
    can never deadlock with a completion batch over the same rows; a held row whose lease
    was lost is reported lost."""
    db = migrated_db
    ids = [f"beat-{n:03d}" for n in range(40)]
    leases = [
        replace(item, progress=(1, 2, "half"))
        for item in await _running_rows(db, list(reversed(ids)))
    ]
    longer = timedelta(minutes=10)
    async with db.engine.connect() as holder:
        await holder.execute(select(Job.id).where(Job.id == ids[0]).with_for_update())
        beats = await asyncio.wait_for(heartbeat_many(db, leases, lease=longer), timeout=5)
        await holder.rollback()
    assert all(beat.owned and not beat.cancel_requested for beat in beats.values())
    assert [job_id for job_id, beat in beats.items() if not beat.written] == [ids[0]]
    assert (await _job(db, ids[0])).progress_message is None
    assert (await _job(db, ids[1])).progress_message == "half"
    beats = await heartbeat_many(db, leases, lease=longer)
    assert all(beat.written for beat in beats.values())
    assert (await _job(db, ids[0])).progress_message == "half"
    async with db.transaction() as session:
        await session.execute(update(Job).where(Job.id == ids[1]).values(lease_token="other"))
    async with db.engine.connect() as holder:
        await holder.execute(select(Job.id).where(Job.id == ids[1]).with_for_update())
        beats = await asyncio.wait_for(heartbeat_many(db, leases, lease=longer), timeout=5)
        await holder.rollback()
    assert not beats[ids[1]].owned and not beats[ids[1]].written
    assert beats[ids[2]].owned and beats[ids[2]].written


async def test_progress_and_logs_survive_a_failed_heartbeat(
    migrated_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat write that fails gives back the progress and log lines it took: the next
    beat (or the completion) stores them, so nothing a job reported is lost."""
    import keel.jobs.worker as worker_module

    db = migrated_db
    real = worker_module.heartbeat_many
    failures: list[int] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if any(item.logs for item in args[1]) and len(failures) < 2:
            failures.append(1)
            raise ConnectionError("server closed the connection unexpectedly")
        return await real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "heartbeat_many", flaky)
    job_id = await _enqueue(db, "test.batch.chatty")
    async with running(db, lease=0.9):  # a heartbeat every 0.3 s
        await _until(db, job_id, JobState.COMPLETED, timeout=15)
    assert len(failures) == 2
    async with db.session() as session:
        lines = list(
            await session.scalars(
                select(JobLog.message).where(JobLog.job_id == job_id).order_by(JobLog.id)
            )
        )
    assert lines == ["first", "second", "third"]
    assert (await _job(db, job_id)).progress_message == "three"


@job("test.batch.chatty")
async def chatty(ctx: JobContext) -> None:
    for n, word in enumerate(("first", "second", "third"), start=1):
        ctx.log.info(word)
        ctx.progress(n, 3, ("one", "two", "three")[n - 1])
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # the last line goes out with a heartbeat, not the completion


async def test_a_hung_kept_connection_is_dropped_and_the_work_retried(
    migrated_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that never answers (a half-open connection) is abandoned after the kept
    connection timeout and retried on a fresh connection: the worker still runs the job."""
    import keel.jobs.worker as worker_module

    db = migrated_db
    real = worker_module.claim
    hung: list[int] = []

    async def hanging(*args: Any, **kwargs: Any) -> Any:
        if not hung:
            hung.append(1)
            await asyncio.sleep(3600)
        return await real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "claim", hanging)
    monkeypatch.setattr(worker_module, "KEPT_CONNECTION_TIMEOUT", 0.5)
    job_id = await _enqueue(db, "test.add", {"a": 1})
    async with running(db):
        done = await _until(db, job_id, JobState.COMPLETED, timeout=10)
    assert hung and done.result == 2
