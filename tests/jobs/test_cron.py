"""Cron schedules (one job per slot whatever the number of schedulers; missed-slot policy)
and retention pruning of finished jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from keel.core.database import Database
from keel.jobs import JobContext, job
from keel.jobs.cron import _SCHEDULES, enqueue_due, schedule
from keel.jobs.models import Job, JobAttempt, JobState
from keel.jobs.service import prune_finished


@job("test.cron.tick")
async def tick(ctx: JobContext, label: str = "") -> None:
    """A scheduled no-op."""


@pytest.fixture(autouse=True)
def _clean_schedules() -> Iterator[None]:
    before = dict(_SCHEDULES)
    _SCHEDULES.clear()
    yield
    _SCHEDULES.clear()
    _SCHEDULES.update(before)


async def _jobs(db: Database) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(Job)) or 0)


async def test_one_job_per_slot_with_many_schedulers(migrated_db: Database) -> None:
    """Four schedulers on separate engines, racing on the same slot, enqueue it once; the next
    slot is enqueued once more."""
    schedule("every-minute", "* * * * *", "test.cron.tick", {"label": "x"})
    engines = [migrated_db, *(Database(migrated_db.config) for _ in range(3))]
    now = datetime(2026, 11, 22, 5, 0, 30, tzinfo=UTC)
    try:
        made = await asyncio.gather(*(enqueue_due(db, now=now) for db in engines))
        assert sum(made) == 1
        made = await asyncio.gather(
            *(enqueue_due(db, now=now + timedelta(minutes=1)) for db in engines)
        )
        assert sum(made) == 1
    finally:
        for db in engines[1:]:
            await db.dispose()
    assert await _jobs(migrated_db) == 2


async def test_missed_slots_run_once_or_are_skipped(migrated_db: Database) -> None:
    """After downtime, `once` runs the latest missed slot one time; `skip` runs nothing."""
    schedule("nightly", "0 3 * * *", "test.cron.tick", tz="Asia/Seoul")
    schedule("nightly-skip", "0 3 * * *", "test.cron.tick", tz="Asia/Seoul", missed="skip")
    later = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)  # days after several 03:00 KST slots
    assert await enqueue_due(migrated_db, now=later) == 1
    assert await enqueue_due(migrated_db, now=later + timedelta(hours=1)) == 0
    async with migrated_db.session() as session:
        only = await session.scalar(select(Job))
    assert only is not None and only.kind == "test.cron.tick"
    on_time = datetime(2026, 11, 25, 18, 0, 20, tzinfo=UTC)  # 03:00:20 KST on the 26th
    assert await enqueue_due(migrated_db, now=on_time) == 2


@pytest.mark.parametrize(
    ("expression", "tz", "kind", "message"),
    [
        ("every day", "UTC", "test.cron.tick", "not a cron expression"),
        ("0 3 * * *", "Mars/Olympus", "test.cron.tick", "unknown time zone"),
        ("0 3 * * *", "UTC", "no.such.kind", "no job kind"),
    ],
)
def test_bad_schedules_are_refused(expression: str, tz: str, kind: str, message: str) -> None:
    """A wrong expression, zone or kind fails when the schedule is registered."""
    from keel.core.errors import ValidationFailed

    with pytest.raises((ValueError, ValidationFailed), match=message):
        schedule("bad", expression, kind, tz=tz)


async def test_finished_jobs_are_pruned_after_their_retention(migrated_db: Database) -> None:
    """Completed jobs go after their retention, discarded ones after theirs; live ones stay."""
    from keel.jobs import enqueue

    async with migrated_db.transaction() as session:
        ids = [(await enqueue(session, "test.cron.tick")).id for _ in range(4)]
    old = datetime.now(UTC) - timedelta(days=2)
    async with migrated_db.transaction() as session:
        await session.execute(
            update(Job).where(Job.id == ids[0]).values(state=JobState.COMPLETED, finished_at=old)
        )
        await session.execute(
            update(Job).where(Job.id == ids[1]).values(state=JobState.DISCARDED, finished_at=old)
        )
        await session.execute(
            update(Job)
            .where(Job.id == ids[2])
            .values(state=JobState.COMPLETED, finished_at=datetime.now(UTC))
        )
        session.add_all(JobAttempt(job_id=job_id, attempt=1, started_at=old) for job_id in ids[:3])
    removed = await prune_finished(
        migrated_db, completed_after=timedelta(hours=24), failed_after=timedelta(days=7)
    )
    assert removed == 1
    async with migrated_db.session() as session:
        left = set(await session.scalars(select(Job.id)))
        attempts = set(await session.scalars(select(JobAttempt.job_id)))
    assert left == set(ids[1:])
    assert attempts == set(ids[1:3]), "a pruned job's attempts go with it, no others"


async def test_pruning_works_through_batches_and_leaves_live_jobs(
    migrated_db: Database,
) -> None:
    """More expired jobs than one batch all go; a live job stays."""
    from keel.jobs import enqueue

    async with migrated_db.transaction() as session:
        ids = [(await enqueue(session, "test.cron.tick")).id for _ in range(5)]
    old = datetime.now(UTC) - timedelta(days=2)
    async with migrated_db.transaction() as session:
        await session.execute(
            update(Job).where(Job.id.in_(ids[:4])).values(state=JobState.COMPLETED, finished_at=old)
        )
    removed = await prune_finished(
        migrated_db, completed_after=timedelta(hours=1), failed_after=timedelta(days=7), batch=3
    )
    assert removed == 4
    async with migrated_db.session() as session:
        assert set(await session.scalars(select(Job.id))) == {ids[4]}
