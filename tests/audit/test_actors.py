"""Who an event names as its actor when the change is made by a job."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from keel.audit import Actor, bind_actor, record, reset_actor
from keel.audit.models import AuditEvent
from keel.audit.service import seal_all, verify
from keel.core.database import Database
from keel.jobs import JobContext, JobState, Worker, enqueue, job
from keel.jobs.models import Job

ENQUEUER = Actor("user", "u-ada", "ada@example.com", "t-acme", client_ip="10.0.0.7")


@job("test_audit.rename")
async def rename(ctx: JobContext, name: str) -> None:
    async with ctx.db.transaction() as session:
        await record(
            session,
            "thing.rename",
            resource=("thing", "t1"),
            before={"name": "old"},
            after={"name": name},
        )


async def _until_done(db: Database, job_id: str) -> None:
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        async with db.session() as session:
            state = await session.scalar(select(Job.state).where(Job.id == job_id))
        if state == JobState.COMPLETED:
            return
        assert asyncio.get_running_loop().time() < deadline, f"job still {state}"
        await asyncio.sleep(0.05)


async def test_a_job_records_itself_with_its_enqueuer_as_origin(migrated_db: Database) -> None:
    """An event recorded inside a running job names the job (`system`, `job:<id>`) as its
    actor, the actor who enqueued it as `origin`, and that actor's tenant."""
    db = migrated_db
    token = bind_actor(ENQUEUER)
    try:
        async with db.transaction() as session:
            job_id = (await enqueue(session, "test_audit.rename", {"name": "new"})).id
            await record(session, "thing.schedule", resource=("thing", "t1"))
    finally:
        reset_actor(token)
    worker = Worker(db, poll_interval=0.05, lease=5.0)
    running = asyncio.create_task(worker.run())
    try:
        await _until_done(db, job_id)
    finally:
        worker.stop()
        await asyncio.wait_for(running, timeout=20)
    await seal_all(db)
    async with db.session() as session:
        events = {
            event.action: event
            for event in await session.scalars(select(AuditEvent).order_by(AuditEvent.seq))
        }
    scheduled, renamed = events["thing.schedule"], events["thing.rename"]
    assert (scheduled.actor_type, scheduled.actor_id, scheduled.origin) == ("user", "u-ada", None)
    assert (renamed.actor_type, renamed.actor_id) == ("system", f"job:{job_id}")
    assert renamed.actor_label == "test_audit.rename"
    assert renamed.origin == "user:u-ada"
    assert renamed.tenant_id == "t-acme"
    assert renamed.changes == {"name": ["old", "new"]}
    assert (await verify(db, ring=None)).ok
