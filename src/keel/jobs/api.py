"""`/api/v1/jobs`: list and inspect jobs, cancel and retry them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select

from keel.core.errors import NotFound, ValidationFailed, problem_responses
from keel.core.principal import Principal, require, tenant_scope
from keel.jobs.models import TERMINAL, Job, JobAttempt, JobLog, JobState
from keel.jobs.service import operate

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["job_data", "jobs_router"]

Reader = Annotated[Principal, Depends(require("jobs:read", resource=("job", "job_id")))]
Lister = Annotated[Principal, Depends(require("jobs:read"))]
Canceller = Annotated[Principal, Depends(require("jobs:cancel"))]
Retrier = Annotated[Principal, Depends(require("jobs:retry"))]


class JobPage(BaseModel):
    """One page of jobs, newest first."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def job_data(job: Job) -> dict[str, Any]:
    """A job as the API shows it."""
    return {
        "id": job.id,
        "queue": job.queue,
        "kind": job.kind,
        "state": job.state,
        "args": job.args,
        "priority": job.priority,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "run_at": job.run_at,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "progress": {
            "done": job.progress_done,
            "total": job.progress_total,
            "message": job.progress_message,
        },
        "last_error": job.last_error,
        "result": job.result,
        "idempotency_key": job.idempotency_key,
    }


SSE_POLL = 0.5
SSE_MAX_SECONDS = 3600.0


def _sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return (head + f"event: {event}\ndata: {orjson.dumps(data, default=str).decode()}\n\n").encode()


async def _event_stream(keel: Keel, job_id: str, after: int) -> AsyncIterator[bytes]:
    """The job's state and progress whenever they change, and its log lines after log id
    `after` (each carries its id, so a client resumes with Last-Event-ID), until the job
    finishes (or an hour passes: the client reconnects)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SSE_MAX_SECONDS
    last_snapshot: Any = None
    yield b"retry: 1000\n\n"
    while True:
        async with keel.db.session() as session:
            job = await session.get(Job, job_id)
            lines = list(
                await session.scalars(
                    select(JobLog)
                    .where(JobLog.job_id == job_id, JobLog.id > after)
                    .order_by(JobLog.id)
                    .limit(500)
                )
            )
        if job is None:
            yield _sse("gone", {"id": job_id})
            return
        for line in lines:
            after = line.id
            yield _sse(
                "log",
                {
                    "at": line.at,
                    "attempt": line.attempt,
                    "level": line.level,
                    "message": line.message,
                },
                line.id,
            )
        snapshot = (
            job.state,
            job.attempt,
            job.progress_done,
            job.progress_total,
            job.progress_message,
        )
        if snapshot != last_snapshot:
            last_snapshot = snapshot
            yield _sse(
                "state",
                {
                    "state": job.state,
                    "attempt": job.attempt,
                    "progress": {
                        "done": job.progress_done,
                        "total": job.progress_total,
                        "message": job.progress_message,
                    },
                },
                after,
            )
        if job.state in TERMINAL and not lines:
            return
        if loop.time() > deadline:
            return
        await asyncio.sleep(SSE_POLL)


def jobs_router(keel: Keel) -> APIRouter:
    """Routes under /api/v1/jobs."""
    router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

    async def visible(session: Any, actor: Principal, job_id: str) -> Job:
        job = await session.scalar(tenant_scope(select(Job).where(Job.id == job_id), Job, actor))
        if job is None:
            raise NotFound("no such job")
        return job  # type: ignore[no-any-return]

    @router.get("", summary="Jobs (newest first)", responses=problem_responses(401, 403, 422))
    async def jobs(  # noqa: PLR0917 - one parameter per query filter
        actor: Lister,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=36)] = None,
        state: Annotated[str | None, Query(max_length=16)] = None,
        queue: Annotated[str | None, Query(max_length=63)] = None,
        kind: Annotated[str | None, Query(max_length=200)] = None,
        since: datetime | None = None,
    ) -> JobPage:
        query = tenant_scope(select(Job), Job, actor).order_by(Job.id.desc()).limit(limit)
        if state is not None:
            if state not in JobState.ALL:
                raise ValidationFailed(f"state must be one of {', '.join(JobState.ALL)}")
            query = query.where(Job.state == state)
        if queue is not None:
            query = query.where(Job.queue == queue)
        if kind is not None:
            query = query.where(Job.kind == kind)
        if since is not None:
            query = query.where(Job.created_at >= since)
        if cursor is not None:
            query = query.where(Job.id < cursor)
        async with keel.db.session() as session:
            rows = list(await session.scalars(query))
        return JobPage(
            items=[job_data(row) for row in rows],
            next_cursor=rows[-1].id if len(rows) == limit else None,
        )

    @router.get(
        "/{job_id}",
        summary="One job with its attempts and log",
        responses=problem_responses(401, 403, 404),
    )
    async def show(job_id: str, actor: Reader) -> dict[str, Any]:
        async with keel.db.session() as session:
            job = await visible(session, actor, job_id)
            attempts = list(
                await session.scalars(
                    select(JobAttempt)
                    .where(JobAttempt.job_id == job.id)
                    .order_by(JobAttempt.attempt)
                )
            )
            logs = list(
                await session.scalars(
                    select(JobLog).where(JobLog.job_id == job.id).order_by(JobLog.id)
                )
            )
        return {
            **job_data(job),
            "attempts": [
                {
                    "attempt": a.attempt,
                    "worker_id": a.worker_id,
                    "started_at": a.started_at,
                    "finished_at": a.finished_at,
                    "outcome": a.outcome,
                    "failure_class": a.failure_class,
                    "error_type": a.error_type,
                    "error_message": a.error_message,
                }
                for a in attempts
            ],
            "logs_dropped": job.logs_dropped,
            "logs": [
                {
                    "at": line.at,
                    "attempt": line.attempt,
                    "level": line.level,
                    "message": line.message,
                }
                for line in logs
            ],
        }

    @router.get(
        "/{job_id}/events",
        summary="Server-sent events: state, progress and log lines until the job finishes "
        "(resume with Last-Event-ID)",
        responses=problem_responses(401, 403, 404),
        response_class=StreamingResponse,
    )
    async def events(job_id: str, actor: Reader, request: Request) -> StreamingResponse:
        async with keel.db.session() as session:
            job = await visible(session, actor, job_id)
        last_header = request.headers.get("last-event-id", "")
        after = int(last_header) if last_header.isdigit() else 0
        return StreamingResponse(
            _event_stream(keel, job.id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.post(
        "/{job_id}/cancel", summary="Cancel a job", responses=problem_responses(401, 403, 404, 409)
    )
    async def cancel_job(job_id: str, actor: Canceller) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            job = await operate(session, (await visible(session, actor, job_id)).id, "cancel")
        return job_data(job)

    @router.post(
        "/{job_id}/retry",
        summary="Retry a cancelled or discarded job",
        responses=problem_responses(401, 403, 404, 409),
    )
    async def retry_job(job_id: str, actor: Retrier) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            job = await operate(session, (await visible(session, actor, job_id)).id, "retry")
        return job_data(job)

    return router
