"""The queue's state transitions: enqueue, claim, heartbeat, complete, fail, rescue, release,
cancel and retry. Every write by a worker is fenced by (job id, attempt, lease token)."""

from __future__ import annotations

import asyncio
import json
import random
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Integer,
    String,
    Text,
    bindparam,
    cast,
    delete,
    event,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from keel.audit.context import current_actor
from keel.audit.service import record
from keel.core.context import current_trace
from keel.core.database import Database
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.ids import new_id
from keel.jobs.models import (
    ACTIVE,
    CLAIMABLE,
    TERMINAL,
    Job,
    JobAttempt,
    JobLog,
    JobState,
)
from keel.jobs.registry import JobSpec, get_spec

__all__ = [
    "CHANNEL",
    "MAX_LOG_LINES",
    "Claimed",
    "Done",
    "Failure",
    "backoff",
    "cancel",
    "claim",
    "complete",
    "complete_many",
    "enqueue",
    "enqueue_many",
    "fail",
    "heartbeat",
    "heartbeat_many",
    "operate",
    "release",
    "rescue",
    "retry",
    "wake_event",
]

CHANNEL = "keel_jobs"
MAX_LOG_LINES = 500
_WAKE: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Event] = (
    weakref.WeakKeyDictionary()
)


def wake_event() -> asyncio.Event:
    """Set when this process commits an enqueue (SQLite's in-process wake-up); one per
    event loop."""
    loop = asyncio.get_running_loop()
    event_ = _WAKE.get(loop)
    if event_ is None:
        event_ = _WAKE[loop] = asyncio.Event()
    return event_


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop("keel.jobs.enqueued", False):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        waiting = _WAKE.get(loop)
        if waiting is not None:
            waiting.set()


def _is_postgres(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "postgresql"


def _state_in(states: Sequence[str]) -> Any:
    """`state IN ('a', 'b')` with the states written into the SQL: a partial index's WHERE
    is used only when the query's condition implies it, which bound parameters never do
    (SQLite's planner, and PostgreSQL's generic plans for prepared statements)."""
    return Job.state.in_([literal_column(f"'{state}'") for state in states])


async def _notify(session: AsyncSession, queue: str) -> None:
    session.sync_session.info["keel.jobs.enqueued"] = True
    if _is_postgres(session):
        # Transactional: delivered only if the enqueue commits.
        await session.execute(
            text("SELECT pg_notify(:channel, :queue)"), {"channel": CHANNEL, "queue": queue}
        )


def _row(
    spec: JobSpec,
    args: Mapping[str, Any],
    *,
    run_at: datetime | None,
    idempotency_key: str | None,
    priority: int | None,
    queue: str | None,
    now: datetime,
) -> dict[str, Any]:
    if run_at is not None and run_at.tzinfo is None:
        raise ValidationFailed("run_at needs a time zone")
    trace = current_trace()
    actor = current_actor()
    return {
        "id": new_id(),
        "queue": queue or spec.queue,
        "kind": spec.kind,
        "args": spec.validate(args),
        "state": JobState.SCHEDULED if run_at is not None and run_at > now else JobState.AVAILABLE,
        "priority": spec.priority if priority is None else priority,
        "run_at": run_at or now,
        "attempt": 0,
        "max_attempts": spec.max_attempts,
        "timeout": spec.timeout,
        "idempotency_key": idempotency_key,
        "created_at": now,
        "logs_dropped": 0,
        "traceparent": trace.traceparent if trace else None,
        "origin": f"{actor.type}:{actor.id}" if actor is not None and actor.id else None,
        "tenant_id": actor.tenant_id if actor is not None else None,
    }


async def enqueue(
    session: AsyncSession,
    kind: str,
    args: Mapping[str, Any] | None = None,
    *,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    priority: int | None = None,
    queue: str | None = None,
    unique_window: timedelta | None = None,
) -> Job:
    """Add a job to the caller's transaction (it exists iff the caller commits).

    With `idempotency_key`, an unfinished job of the same queue and key (or, with
    `unique_window`, any created within it) is returned instead of a new one.
    """
    spec = get_spec(kind)
    now = datetime.now(UTC)
    values = _row(
        spec,
        args or {},
        run_at=run_at,
        idempotency_key=idempotency_key,
        priority=priority,
        queue=queue,
        now=now,
    )
    if idempotency_key is not None:
        existing = await _existing(session, values["queue"], idempotency_key, unique_window, now)
        if existing is not None:
            return existing
    job = Job(**values)
    if idempotency_key is None:
        session.add(job)  # nothing can collide: no savepoint needed
        await session.flush()
        await _notify(session, job.queue)
        return job
    try:
        async with session.begin_nested():
            session.add(job)
    except IntegrityError:
        # A concurrent enqueue with the same key won the race: return its job.
        existing = await _existing(session, values["queue"], str(idempotency_key), None, now)
        if existing is None:
            raise
        return existing
    await _notify(session, job.queue)
    return job


async def _existing(
    session: AsyncSession, queue: str, key: str, window: timedelta | None, now: datetime
) -> Job | None:
    # unscoped: idempotency keys are per queue; the enqueuing transaction decides.
    query = select(Job).where(Job.queue == queue, Job.idempotency_key == key)
    if window is None:
        query = query.where(_state_in(ACTIVE))
    else:
        query = query.where(_state_in(ACTIVE) | (Job.created_at >= now - window))
    return await session.scalar(query.order_by(Job.created_at.desc()).limit(1))


async def enqueue_many(
    session: AsyncSession, kind: str, many: Sequence[Mapping[str, Any]], *, queue: str | None = None
) -> list[str]:
    """Add many jobs of one kind in one statement (no idempotency keys); returns their ids."""
    spec = get_spec(kind)
    now = datetime.now(UTC)
    rows = [
        _row(spec, args, run_at=None, idempotency_key=None, priority=None, queue=queue, now=now)
        for args in many
    ]
    if rows:
        await session.execute(insert(Job), rows)
        await _notify(session, rows[0]["queue"])
    return [row["id"] for row in rows]


# --- workers -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Claimed:
    """A job as a worker claimed it: what running it needs, without ORM state."""

    id: str
    queue: str
    kind: str
    args: dict[str, Any]
    priority: int
    run_at: datetime
    attempt: int
    max_attempts: int
    timeout: float | None
    lease_token: str
    traceparent: str | None
    origin: str | None
    tenant_id: str | None


_CLAIMED_COLUMNS = (
    Job.id,
    Job.queue,
    Job.kind,
    Job.args,
    Job.priority,
    Job.run_at,
    Job.attempt,
    Job.max_attempts,
    Job.timeout,
    Job.lease_token,
    Job.traceparent,
    Job.origin,
    Job.tenant_id,
)


async def claim(
    db: Database,
    *,
    queues: Sequence[str],
    limit: int,
    worker_id: str,
    lease: timedelta,
    connection: AsyncConnection | None = None,
) -> list[Claimed]:
    """Take up to `limit` due jobs of `queues`, each with a fresh lease, queue by queue in
    the given order (within a queue: priority, then due time, then id — the claim index's
    order). PostgreSQL: one statement per queue with FOR UPDATE SKIP LOCKED (workers never
    block each other); SQLite: the write lock serialises claims. `connection`: an autocommit
    connection the worker keeps for this (PostgreSQL), saving a checkout per claim."""
    claimed: list[Claimed] = []
    for queue in queues:
        room = limit - len(claimed)
        if room <= 0:
            break
        if db.dialect == "postgresql":
            claimed += await _claim_postgres(
                db, queue, room, worker_id, lease, connection=connection
            )
        else:
            claimed += await _claim_sqlite(db, queue, room, worker_id, lease)
    return claimed


# The claim statements are built once, with bound parameters: building and hashing a CTE
# statement per claim cost more CPU than running it.
_NOW = bindparam("c_now", type_=Job.run_at.type)
_DUE = (
    Job.queue == bindparam("c_queue", type_=Job.queue.type),
    _state_in(CLAIMABLE),
    Job.run_at <= _NOW,
)
_LEASE_VALUES: dict[str, Any] = {
    "state": JobState.RUNNING,
    "attempt": Job.attempt + 1,
    "lease_token": bindparam("c_token", type_=Job.lease_token.type),
    "lease_expires_at": bindparam("c_expires", type_=Job.lease_expires_at.type),
    "worker_id": bindparam("c_worker", type_=Job.worker_id.type),
    "started_at": func.coalesce(Job.started_at, _NOW),
}
_ORDER = (Job.priority, Job.run_at, Job.id)  # the claim index's order


def _claim_statement_postgres() -> Any:
    """Pick (skipping rows other workers hold), lease, and open the attempts: one statement,
    so one round trip, atomic by itself."""
    # unscoped: workers serve every tenant's jobs.
    picked = (
        select(Job.id)
        .where(*_DUE)
        .order_by(*_ORDER)
        .limit(bindparam("c_limit", type_=Integer))
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    leased = (
        update(Job)
        .where(Job.id == picked.c.id)
        .values(**_LEASE_VALUES)
        .returning(*_CLAIMED_COLUMNS)
        .cte("leased")
    )
    attempts = (
        insert(JobAttempt)
        .from_select(
            ["job_id", "attempt", "worker_id", "started_at"],
            select(
                leased.c.id,
                leased.c.attempt,
                bindparam("c_worker", type_=JobAttempt.worker_id.type),
                bindparam("c_now", type_=JobAttempt.started_at.type),
            ),
        )
        .cte("attempts")
    )
    return select(*(leased.c[column.key] for column in _CLAIMED_COLUMNS)).add_cte(attempts)


_CLAIM_POSTGRES = _claim_statement_postgres()
_PROBE_SQLITE = select(Job.id).where(*_DUE).limit(1)
_CLAIM_SQLITE = (
    update(Job)
    .where(
        Job.id.in_(
            select(Job.id)
            .where(*_DUE)
            .order_by(*_ORDER)
            .limit(bindparam("c_limit", type_=Integer))
            .scalar_subquery()
        )
    )
    .values(**_LEASE_VALUES)
    .returning(*_CLAIMED_COLUMNS)
)


def _claim_parameters(
    queue: str, limit: int, worker_id: str, lease: timedelta, now: datetime
) -> dict[str, Any]:
    return {
        "c_queue": queue,
        "c_now": now,
        "c_limit": limit,
        "c_token": new_id(),  # one per claim: the fence is (job id, attempt, token)
        "c_expires": now + lease,
        "c_worker": worker_id,
    }


def _claimed(rows: Sequence[Any]) -> list[Claimed]:
    jobs = [Claimed(*row) for row in rows]
    jobs.sort(key=lambda job: (job.priority, job.run_at, job.id))
    return jobs


async def _claim_postgres(
    db: Database,
    queue: str,
    limit: int,
    worker_id: str,
    lease: timedelta,
    *,
    connection: AsyncConnection | None,
) -> list[Claimed]:
    # unscoped: workers serve every tenant's jobs.
    parameters = _claim_parameters(queue, limit, worker_id, lease, datetime.now(UTC))
    if connection is not None:
        rows = (await connection.execute(_CLAIM_POSTGRES, parameters)).all()
    else:
        async with db.write_connection() as own:
            rows = (await own.execute(_CLAIM_POSTGRES, parameters)).all()
    return _claimed(rows)


async def _claim_sqlite(
    db: Database, queue: str, limit: int, worker_id: str, lease: timedelta
) -> list[Claimed]:
    # unscoped: workers serve every tenant's jobs.
    parameters = _claim_parameters(queue, limit, worker_id, lease, datetime.now(UTC))
    async with db.engine.connect() as connection:
        # A read first, so an idle worker never takes SQLite's write lock.
        if (await connection.execute(_PROBE_SQLITE, parameters)).first() is None:
            return []
    async with db.write_connection() as connection:
        rows = (await connection.execute(_CLAIM_SQLITE, parameters)).all()
        if rows:
            await connection.execute(
                insert(JobAttempt),
                [
                    {
                        "job_id": row.id,
                        "attempt": row.attempt,
                        "worker_id": worker_id,
                        "started_at": parameters["c_now"],
                    }
                    for row in rows
                ],
            )
    return _claimed(rows)


_LEASED_STATES = (JobState.RUNNING, JobState.CANCELLING)


def _fence(job_id: str, attempt: int, token: str) -> Any:
    return (
        (Job.id == job_id)
        & (Job.attempt == attempt)
        & (Job.lease_token == token)
        & _state_in(_LEASED_STATES)
    )


# The fence with bound parameters, for statements built once and run for many jobs.
_FENCED = (
    (Job.id == bindparam("b_id"))
    & (Job.attempt == bindparam("b_attempt"))
    & (Job.lease_token == bindparam("b_token"))
    # Not `in_()`: an expanding IN cannot be used with executemany.
    & or_(*(Job.state == state for state in _LEASED_STATES))
)
_PROGRESS_VALUES = {
    "progress_done": bindparam("b_done", type_=Job.progress_done.type),
    "progress_total": bindparam("b_total", type_=Job.progress_total.type),
    "progress_message": bindparam("b_message", type_=Job.progress_message.type),
}
_PROGRESS = update(Job).where(_FENCED).values(**_PROGRESS_VALUES)


@dataclass(frozen=True, slots=True)
class Beat:
    """What a heartbeat learned. `written`: the lease was extended and the progress and log
    lines stored; False for a job whose row another transaction held (its completion being
    written, an operator's cancel): it was skipped this beat and its lines are to be sent
    again."""

    owned: bool
    cancel_requested: bool
    written: bool = True


async def heartbeat(
    db: Database,
    job_id: str,
    attempt: int,
    token: str,
    *,
    lease: timedelta,
    progress: tuple[float | None, float | None, str | None] | None = None,
    logs: Sequence[tuple[datetime, str, str]] = (),
) -> Beat:
    """Extend one lease and flush its buffered progress and log lines (fenced)."""
    beats = await heartbeat_many(db, [Lease(job_id, attempt, token, progress, logs)], lease=lease)
    return beats[job_id]


@dataclass(frozen=True, slots=True)
class Lease:
    """What a worker holds for one running job, and what it has to flush for it."""

    job_id: str
    attempt: int
    token: str
    progress: tuple[float | None, float | None, str | None] | None = None
    logs: Sequence[tuple[datetime, str, str]] = ()


async def heartbeat_many(
    db: Database, leases: Sequence[Lease], *, lease: timedelta
) -> dict[str, Beat]:
    """`heartbeat` for all of a worker's jobs in one transaction: one statement extends every
    lease still held, then progress and log lines are written for those (one commit, one turn
    of SQLite's write lock, however many jobs are running).

    On PostgreSQL a heartbeat never waits for a row lock: rows another transaction holds
    are skipped (`SKIP LOCKED`) and read instead, to tell a lease still held (reported owned,
    `written=False`) from one lost. So a heartbeat can never deadlock with the worker's own
    completion batch, which writes many of the same rows in whatever order its plan takes."""
    # unscoped: a worker's fenced writes to the jobs it holds.
    if not leases:
        return {}
    now = datetime.now(UTC)
    held = sorted(leases, key=lambda item: item.job_id)
    fences = [(item.job_id, item.attempt, item.token) for item in held]
    fenced = (
        tuple_(Job.id, Job.attempt, Job.lease_token).in_(fences),
        _state_in(_LEASED_STATES),
    )
    async with db.write_connection() as connection:
        free = (
            select(Job.id)
            .where(Job.id.in_([item.job_id for item in held]))
            .with_for_update(skip_locked=True)
        )
        extended = await connection.execute(
            update(Job)
            .where(Job.id.in_(free), *fenced)
            .values(lease_expires_at=now + lease)
            .returning(Job.id, Job.state)
        )
        states: dict[str, str] = {row.id: row.state for row in extended}
        busy: dict[str, str] = {}
        if len(states) < len(held) and db.dialect == "postgresql":
            # Not extended: lost, or skipped because another transaction holds the row.
            # The last committed version tells which.
            rows = await connection.execute(select(Job.id, Job.state).where(*fenced))
            busy = {row.id: row.state for row in rows if row.id not in states}
        progress = [
            {
                "b_id": item.job_id,
                "b_attempt": item.attempt,
                "b_token": item.token,
                "b_done": item.progress[0],
                "b_total": item.progress[1],
                "b_message": item.progress[2],
            }
            for item in held
            if item.progress is not None and item.job_id in states
        ]
        if progress:
            await connection.execute(_PROGRESS, progress)
        for item in held:
            if item.logs and item.job_id in states:
                await _write_logs(connection, item.job_id, item.attempt, item.logs)
    seen = {**busy, **states}
    return {
        item.job_id: Beat(
            owned=item.job_id in seen,
            cancel_requested=seen.get(item.job_id) == JobState.CANCELLING,
            written=item.job_id in states,
        )
        for item in held
    }


async def _write_logs(
    connection: AsyncConnection,
    job_id: str,
    attempt: int,
    logs: Sequence[tuple[datetime, str, str]],
) -> None:
    # unscoped: a worker's write to the job it holds (its caller is fenced).
    await connection.execute(
        insert(JobLog),
        [
            {
                "job_id": job_id,
                "attempt": attempt,
                "at": at,
                "level": level,
                "message": message[:4000],
            }
            for at, level, message in logs
        ],
    )
    count = int(
        await connection.scalar(
            select(func.count()).select_from(JobLog).where(JobLog.job_id == job_id)
        )
        or 0
    )
    excess = count - MAX_LOG_LINES
    if excess > 0:
        oldest = select(JobLog.id).where(JobLog.job_id == job_id).order_by(JobLog.id).limit(excess)
        await connection.execute(delete(JobLog).where(JobLog.id.in_(oldest.scalar_subquery())))
        await connection.execute(
            update(Job).where(Job.id == job_id).values(logs_dropped=Job.logs_dropped + excess)
        )


@dataclass(frozen=True, slots=True)
class Done:
    """A finished run a worker reports: its fence, result, and last progress and log lines."""

    job_id: str
    attempt: int
    token: str
    result: Any = None
    progress: tuple[float | None, float | None, str | None] | None = None
    logs: Sequence[tuple[datetime, str, str]] = ()


_COMPLETE = (
    update(Job)
    .where(_FENCED)
    .values(
        state=JobState.COMPLETED,
        finished_at=bindparam("b_now", type_=Job.finished_at.type),
        lease_token=None,
        lease_expires_at=None,
        result=bindparam("b_result", type_=Job.result.type),
        last_error=None,
    )
)
_COMPLETE_WITH_PROGRESS = _COMPLETE.values(**_PROGRESS_VALUES)
_ATTEMPT_COMPLETED = (
    update(JobAttempt)
    .where(
        (JobAttempt.job_id == bindparam("b_id")) & (JobAttempt.attempt == bindparam("b_attempt"))
    )
    .values(finished_at=bindparam("b_now", type_=JobAttempt.finished_at.type), outcome="completed")
)


async def complete_many(
    db: Database, finished: Sequence[Done], *, connection: AsyncConnection | None = None
) -> set[str]:
    """Mark many jobs completed in one transaction, each only if its attempt still holds the
    lease. Returns the ids of those fenced off (another attempt owns them now).

    `connection`: an autocommit PostgreSQL connection the worker keeps; completions without
    progress or log lines then take one statement (one round trip)."""
    # unscoped: a worker's fenced writes to the jobs it holds.
    if not finished:
        return set()
    fast = not any(d.progress is not None or d.logs for d in finished)
    if connection is not None and db.dialect == "postgresql" and fast:
        return await _complete_postgres(connection, finished)
    now = datetime.now(UTC)
    plain, with_progress = [], []
    finished = sorted(finished, key=lambda done: done.job_id)
    for done in finished:
        params = {
            "b_id": done.job_id,
            "b_attempt": done.attempt,
            "b_token": done.token,
            "b_now": now,
            "b_result": done.result,
        }
        if done.progress is None:
            plain.append(params)
        else:
            params["b_done"], params["b_total"], params["b_message"] = done.progress
            with_progress.append(params)
    async with db.write_connection() as writer:
        stored = 0
        for statement, rows in ((_COMPLETE, plain), (_COMPLETE_WITH_PROGRESS, with_progress)):
            if rows:
                stored += (await writer.execute(statement, rows)).rowcount
        fenced: set[str] = set()
        if stored != len(finished):
            # Rare: some attempt lost its lease. Find which, by what this statement wrote.
            ours = select(Job.id).where(
                tuple_(Job.id, Job.attempt).in_([(d.job_id, d.attempt) for d in finished]),
                Job.state == JobState.COMPLETED,
                Job.finished_at == now,
            )
            kept = set((await writer.scalars(ours)).all())
            fenced = {done.job_id for done in finished} - kept
        attempts = [
            {"b_id": d.job_id, "b_attempt": d.attempt, "b_now": now}
            for d in finished
            if d.job_id not in fenced
        ]
        if attempts:
            await writer.execute(_ATTEMPT_COMPLETED, attempts)
        for done in finished:
            if done.logs and done.job_id not in fenced:
                await _write_logs(writer, done.job_id, done.attempt, done.logs)
    return fenced


def _complete_statement_postgres() -> Any:
    """Fenced completion of many jobs and their attempts: one statement (built once)."""
    # unscoped: a worker's fenced writes to the jobs it holds.
    now = bindparam("b_now", type_=Job.finished_at.type)
    rows = (
        select(
            func.unnest(bindparam("b_ids", type_=ARRAY(String))).label("id"),
            func.unnest(bindparam("b_attempts", type_=ARRAY(Integer))).label("attempt"),
            func.unnest(bindparam("b_tokens", type_=ARRAY(String))).label("token"),
            func.unnest(bindparam("b_results", type_=ARRAY(Text))).label("result"),
        )
    ).subquery("finished")
    done = (
        update(Job)
        .where(
            Job.id == rows.c.id,
            Job.attempt == rows.c.attempt,
            Job.lease_token == rows.c.token,
            _state_in(_LEASED_STATES),
        )
        .values(
            state=JobState.COMPLETED,
            finished_at=now,
            lease_token=None,
            lease_expires_at=None,
            result=cast(rows.c.result, JSON),
            last_error=None,
        )
        .returning(Job.id, Job.attempt)
        .cte("done")
    )
    attempts = (
        update(JobAttempt)
        .where(JobAttempt.job_id == done.c.id, JobAttempt.attempt == done.c.attempt)
        .values(finished_at=now, outcome="completed")
        .cte("attempts")
    )
    return select(done.c.id).add_cte(attempts)


_COMPLETE_POSTGRES = _complete_statement_postgres()


async def _complete_postgres(connection: AsyncConnection, finished: Sequence[Done]) -> set[str]:
    ordered = sorted(finished, key=lambda done: done.job_id)
    stored = await connection.scalars(
        _COMPLETE_POSTGRES,
        {
            "b_now": datetime.now(UTC),
            "b_ids": [d.job_id for d in ordered],
            "b_attempts": [d.attempt for d in ordered],
            "b_tokens": [d.token for d in ordered],
            "b_results": [json.dumps(d.result) for d in ordered],
        },
    )
    return {d.job_id for d in ordered} - set(stored.all())


async def complete(
    db: Database,
    job_id: str,
    attempt: int,
    token: str,
    *,
    result: Any = None,
    progress: tuple[float | None, float | None, str | None] | None = None,
    logs: Sequence[tuple[datetime, str, str]] = (),
) -> bool:
    """Mark the job completed, if this attempt still holds its lease. False when fenced off."""
    fenced = await complete_many(db, [Done(job_id, attempt, token, result, progress, logs)])
    return job_id not in fenced


async def _finish_attempt(
    connection: AsyncConnection,
    job_id: str,
    attempt: int,
    now: datetime,
    *,
    outcome: str,
    failure: Failure | None = None,
) -> None:
    await connection.execute(
        update(JobAttempt)
        .where(JobAttempt.job_id == job_id, JobAttempt.attempt == attempt)
        .values(
            finished_at=now,
            outcome=outcome,
            failure_class=failure.kind if failure else None,
            error_type=failure.error_type if failure else None,
            error_message=failure.message if failure else None,
            traceback=failure.traceback if failure else None,
        )
    )


@dataclass(frozen=True, slots=True)
class Failure:
    """How an attempt failed."""

    kind: str  # transient | permanent | timeout | cancelled | worker_lost | dependency_unavailable
    error_type: str | None = None
    message: str | None = None
    traceback: str | None = None
    retry_after: float | None = None


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base · 2^(attempt-1))]."""
    return random.uniform(0, min(cap, base * (2 ** max(0, attempt - 1))))  # noqa: S311


async def fail(
    db: Database,
    job_id: str,
    attempt: int,
    token: str,
    failure: Failure,
    *,
    max_attempts: int,
    delay: float,
    logs: Sequence[tuple[datetime, str, str]] = (),
) -> str | None:
    """Record a failed attempt and move the job on (retryable, discarded or cancelled), if this
    attempt still holds its lease. Returns the new state, or None when fenced off."""
    # unscoped: a worker's fenced write to the job it holds.
    now = datetime.now(UTC)
    if failure.kind == "cancelled":
        state = JobState.CANCELLED
    elif failure.kind == "permanent" or attempt >= max_attempts:
        state = JobState.DISCARDED
    else:
        state = JobState.RETRYABLE
    async with db.transaction() as session:
        values: dict[str, Any] = {
            "state": state,
            "lease_token": None,
            "lease_expires_at": None,
            "last_error": f"{failure.error_type or failure.kind}: {failure.message or ''}"[:2000],
        }
        if state == JobState.RETRYABLE:
            values["run_at"] = now + timedelta(seconds=delay)
        else:
            values["finished_at"] = now
        moved = await session.execute(
            update(Job).where(_fence(job_id, attempt, token)).values(**values).returning(Job.id)
        )
        if moved.first() is None:
            return None
        await _finish_attempt(
            await session.connection(), job_id, attempt, now, outcome="failed", failure=failure
        )
        if logs:
            await _write_logs(await session.connection(), job_id, attempt, logs)
    return state


async def release(db: Database, job_id: str, attempt: int, token: str) -> bool:
    """Give a running job back at once (graceful shutdown): available again, and this
    interrupted attempt not counted."""
    # unscoped: a worker's fenced write to the job it holds.
    async with db.transaction() as session:
        released = await session.execute(
            update(Job)
            .where(_fence(job_id, attempt, token))
            .values(
                state=JobState.AVAILABLE,
                attempt=attempt - 1,
                lease_token=None,
                lease_expires_at=None,
                run_at=datetime.now(UTC),
            )
            .returning(Job.id)
        )
        if released.first() is None:
            return False
        await session.execute(
            delete(JobAttempt).where(JobAttempt.job_id == job_id, JobAttempt.attempt == attempt)
        )
    return True


async def rescue(db: Database, *, limit: int = 100) -> int:
    """Return jobs whose lease expired (their worker died or stalled) to `retryable`, or end
    them when out of attempts or being cancelled; the attempt counts as `worker_lost`. Safe to
    run in every worker at once."""
    # unscoped: the rescuer serves every tenant's jobs.
    now = datetime.now(UTC)
    async with db.transaction() as session:
        query = (
            select(Job)
            .where(
                _state_in((JobState.RUNNING, JobState.CANCELLING)),
                Job.lease_expires_at < now,
            )
            .order_by(Job.lease_expires_at)
            .limit(limit)
        )
        if _is_postgres(session):
            query = query.with_for_update(skip_locked=True)
        jobs = list(await session.scalars(query))
        lost = Failure("worker_lost", "WorkerLost", "the worker stopped heartbeating")
        for job in jobs:
            await _finish_attempt(
                await session.connection(), job.id, job.attempt, now, outcome="failed", failure=lost
            )
            job.lease_token, job.lease_expires_at = None, None
            job.last_error = "worker_lost: the worker stopped heartbeating"
            if job.state == JobState.CANCELLING:
                job.state, job.finished_at = JobState.CANCELLED, now
            elif job.attempt >= job.max_attempts:
                job.state, job.finished_at = JobState.DISCARDED, now
            else:
                job.state, job.run_at = JobState.RETRYABLE, now
    return len(jobs)


# --- operators ---------------------------------------------------------------------------------


async def get_job(session: AsyncSession, job_id: str, *, lock: bool = False) -> Job:
    """The job, or `NotFound`. `lock`: read it fresh with FOR UPDATE (PostgreSQL), so an
    operator's change cannot overwrite a completion or claim committed meanwhile."""
    job = await session.get(Job, job_id, with_for_update=lock, populate_existing=lock)
    if job is None:
        raise NotFound("no such job")
    return job


async def cancel(session: AsyncSession, job_id: str) -> Job:
    """Cancel: a queued job at once; a running one is asked to stop (`cancelling`)."""
    job = await get_job(session, job_id, lock=True)
    now = datetime.now(UTC)
    if job.state in CLAIMABLE:
        job.state, job.finished_at = JobState.CANCELLED, now
    elif job.state == JobState.RUNNING:
        job.state, job.cancel_requested_at = JobState.CANCELLING, now
    elif job.state in TERMINAL:
        raise Conflict(f"the job is already {job.state}")
    return job


async def retry(session: AsyncSession, job_id: str) -> Job:
    """Run a cancelled or discarded job again: a new attempt, its history kept."""
    job = await get_job(session, job_id, lock=True)
    if job.state not in (JobState.CANCELLED, JobState.DISCARDED):
        raise Conflict(f"only cancelled or discarded jobs can be retried (this one is {job.state})")
    job.state = JobState.AVAILABLE
    job.run_at = datetime.now(UTC)
    job.finished_at = None
    job.cancel_requested_at = None
    job.max_attempts = max(job.max_attempts, job.attempt + 1)
    await _notify(session, job.queue)
    return job


async def prune_finished(
    db: Database, *, completed_after: timedelta, failed_after: timedelta, batch: int = 1000
) -> int:
    """Delete finished jobs past their retention (completed ones sooner than discarded or
    cancelled ones, which operators may still inspect or retry), `batch` at a time so the hot
    table stays small without long locks. Returns how many went."""
    now = datetime.now(UTC)
    total = 0
    for states, age in (
        ((JobState.COMPLETED,), completed_after),
        ((JobState.DISCARDED, JobState.CANCELLED), failed_after),
    ):
        while True:
            async with db.transaction() as session:
                # unscoped: retention applies to every tenant's jobs.
                expired = (Job.state.in_(states), Job.finished_at < now - age)
                picked = select(Job.id).where(*expired).limit(batch).scalar_subquery()
                # The conditions are repeated so a job retried meanwhile is not deleted.
                gone = list(
                    (
                        await session.scalars(
                            delete(Job).where(Job.id.in_(picked), *expired).returning(Job.id)
                        )
                    ).all()
                )
                if gone:
                    # Attempts have no foreign key (see models): they go with their job.
                    await session.execute(delete(JobAttempt).where(JobAttempt.job_id.in_(gone)))
            removed = len(gone)
            total += removed
            if removed < batch:
                break
    return total


async def operate(session: AsyncSession, job_id: str, action: str) -> Job:
    """An operator's `cancel` or `retry` of a job, recorded in the audit trail (API and CLI)."""
    change = {"cancel": cancel, "retry": retry}[action]
    job = await get_job(session, job_id, lock=True)
    before = job.state
    await change(session, job_id)
    await record(
        session,
        f"job.{action}",
        resource=("job", job_id),
        before={"state": before},
        after={"state": job.state},
        tenant_id=job.tenant_id,
    )
    return job
