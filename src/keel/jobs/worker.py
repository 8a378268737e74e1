"""The worker: claims jobs, runs them with a context, heartbeats their leases, rescues jobs
whose worker died, and shuts down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from keel import settings
from keel.audit.context import Actor, bind_actor, reset_actor
from keel.core.changes import PgListener
from keel.core.context import TraceContext, reset_trace, set_trace
from keel.core.database import Database
from keel.core.ids import new_id
from keel.jobs.cron import enqueue_due, prune_slots
from keel.jobs.metrics import JobMetrics
from keel.jobs.models import Job, JobEffect
from keel.jobs.registry import JobSpec, Permanent, Transient, registered
from keel.jobs.service import (
    CHANNEL,
    Claimed,
    Done,
    Failure,
    Lease,
    backoff,
    claim,
    complete_many,
    fail,
    heartbeat_many,
    prune_finished,
    release,
    rescue,
    wake_event,
)
from keel.observability.logging import get_logger

__all__ = ["JobContext", "LeaseLost", "Worker"]

T = TypeVar("T")
PRUNE_INTERVAL = settings.declare(
    "jobs.prune_interval",
    timedelta,
    default=timedelta(minutes=10),
    ge=timedelta(seconds=1),
    le=timedelta(days=1),
    env="KEEL_JOBS_PRUNE_INTERVAL",
    description="How often each worker deletes finished jobs past their retention.",
)
"""The time between retention passes over finished jobs (a runtime setting)."""
DEPTH_INTERVAL = 5.0
"""Seconds between queue-depth refreshes for the metrics."""
FLUSH_DELAY = 0.005
"""Seconds a finished job's completion may wait to be written with others (or until half
a batch has finished)."""
REFILL_DELAY = 0.005
"""Seconds a freed slot may stay empty while a backlogged worker gathers freed slots into one
claim (or until half of them are free)."""
MAX_BUFFERED_LOGS = 1000
"""Log lines a job keeps between heartbeats (the oldest are dropped beyond it)."""
KEPT_CONNECTION_TIMEOUT = 30.0
"""Seconds a claim or a completion batch on a kept connection may take before the connection
is dropped and the work retried on a fresh one (a half-open connection never stalls a worker;
jobs a timed-out claim took are returned by the rescuer when their lease expires)."""
_logger = get_logger("keel.jobs")


class LeaseLost(Exception):
    """This attempt no longer holds the job's lease: another attempt owns the job now."""


class _Log:
    def __init__(self, context: JobContext) -> None:
        self._context = context

    def _add(self, level: str, message: str) -> None:
        self._context._logs.append((datetime.now(UTC), level, message))
        if len(self._context._logs) > MAX_BUFFERED_LOGS:  # a chatty job between flushes
            del self._context._logs[: len(self._context._logs) - MAX_BUFFERED_LOGS]

    def debug(self, message: str) -> None:
        self._add("debug", message)

    def info(self, message: str) -> None:
        self._add("info", message)

    def warning(self, message: str) -> None:
        self._add("warning", message)

    def error(self, message: str) -> None:
        self._add("error", message)


class JobContext:
    """What a running job sees: its ids, progress, a stored log, cancellation, exactly-once."""

    def __init__(self, db: Database, job: Claimed, token: str) -> None:
        self.db = db
        self.job_id = job.id
        self.kind = job.kind
        self.attempt = job.attempt
        self.args = dict(job.args)
        self.traceparent = job.traceparent
        self._token = token
        self._cancel_requested = False
        self._cancelled: asyncio.Event | None = None  # made when a job waits for it
        self._logs: list[tuple[datetime, str, str]] = []
        self._progress: tuple[float | None, float | None, str | None] | None = None
        self._failure: str | None = None
        self.log = _Log(self)

    @property
    def cancelled(self) -> bool:
        """Whether an operator asked this job to stop (check it between steps)."""
        return self._cancel_requested

    async def wait_cancelled(self) -> None:
        """Return when the job is asked to stop."""
        if self._cancelled is None:
            self._cancelled = asyncio.Event()
            if self._cancel_requested:
                self._cancelled.set()
        await self._cancelled.wait()

    def _request_cancel(self) -> None:
        self._cancel_requested = True
        if self._cancelled is not None:
            self._cancelled.set()

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report progress; written with the next heartbeat (at most once a second)."""
        self._progress = (done, total, (message or "")[:500] or None)

    def _take(self) -> tuple[Any, list[tuple[datetime, str, str]]]:
        progress, self._progress = self._progress, None
        logs, self._logs = self._logs, []
        return progress, logs

    def _give_back(self, progress: Any, logs: list[tuple[datetime, str, str]]) -> None:
        """Return what a failed write took, ahead of what came since (newer progress wins)."""
        if self._progress is None:
            self._progress = progress
        self._logs[:0] = logs
        if len(self._logs) > MAX_BUFFERED_LOGS:
            del self._logs[: len(self._logs) - MAX_BUFFERED_LOGS]

    async def once(self, key: str, effect: Callable[[AsyncSession], Awaitable[T]]) -> T | None:
        """Run `effect(session)` in a transaction that also records `key` for this job, and
        only if this attempt still holds the lease: the effect commits at most once however
        often the job is retried or rescued. Returns None when it already committed."""
        # unscoped: the running job checks its own lease.
        async with self.db.transaction() as session:
            query = select(Job.id).where(
                Job.id == self.job_id, Job.attempt == self.attempt, Job.lease_token == self._token
            )
            if session.bind is not None and session.bind.dialect.name == "postgresql":
                query = query.with_for_update()
            if await session.scalar(query) is None:
                raise LeaseLost()
            if await session.get(JobEffect, (self.job_id, key)) is not None:
                return None
            session.add(
                JobEffect(job_id=self.job_id, key=key, attempt=self.attempt, at=datetime.now(UTC))
            )
            try:
                await session.flush()
            except IntegrityError:
                return None
            return await effect(session)


def _trace_of(traceparent: str | None) -> TraceContext | None:
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) != 4:
        return None
    return TraceContext(
        trace_id=parts[1],
        span_id=new_id().replace("-", "")[:16],
        parent_span_id=parts[2],
        sampled=parts[3] == "01",
        request_id=parts[1],
    )


class _Dedicated:
    """An autocommit connection a worker keeps for one of its loops (PostgreSQL only): no pool
    checkout, ping, BEGIN or COMMIT per claim or completion batch. Reopened after an error."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._connection: AsyncConnection | None = None

    async def get(self) -> AsyncConnection | None:
        """The connection (None on SQLite, whose writes go through the write lock)."""
        if self.db.dialect != "postgresql":
            return None
        if self._connection is None:
            connection = await self.db.engine.connect()
            self._connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        return self._connection

    async def done(self) -> None:
        """End SQLAlchemy's bookkeeping transaction (the database autocommitted already)."""
        if self._connection is not None:
            await self._connection.commit()

    async def close(self) -> None:
        """Drop it after an error (the next `get` opens a fresh one). It is invalidated, not
        returned to the pool: a connection that failed or timed out mid-statement may be
        half-open, and the pool's rollback on return could hang on it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.invalidate(), timeout=5.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=5.0)


class Worker:
    """Runs jobs of `queues`, at most `concurrency` at once."""

    def __init__(
        self,
        db: Database,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = 10,
        claim_batch: int | None = None,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        grace: float = 10.0,
        cancel_grace: float = 10.0,
        worker_id: str | None = None,
        completed_retention: timedelta = timedelta(hours=24),
        failed_retention: timedelta = timedelta(days=7),
        metrics: JobMetrics | None = None,
    ) -> None:
        self.db = db
        # "name" or "name:limit" (at most `limit` of that queue's jobs at once in this worker).
        self.queues: list[str] = []
        self.queue_limits: dict[str, int] = {}
        for entry in queues:
            name, _, limit = entry.partition(":")
            self.queues.append(name.strip())
            if limit.strip():
                if not limit.strip().isdigit() or int(limit) < 1:
                    raise ValueError(f"queue limit in {entry!r} must be a positive integer")
                self.queue_limits[name.strip()] = int(limit)
        self._queue_of: dict[str, str] = {}
        self.concurrency = concurrency
        if claim_batch is not None and claim_batch < 1:
            raise ValueError("claim_batch must be a positive integer")
        self.claim_batch = min(concurrency, claim_batch or concurrency)
        self.lease = timedelta(seconds=lease)
        self.poll_interval = poll_interval
        self.grace = grace
        self.cancel_grace = cancel_grace
        self.metrics = metrics
        self.completed_retention = completed_retention
        self.failed_retention = failed_retention
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self._running: dict[str, tuple[asyncio.Task[None], JobContext]] = {}
        self._cancel_deadlines: dict[str, float] = {}
        self._completions: list[Done] = []
        self._writing: list[Done] = []  # the batch being written
        self._flush_lock = asyncio.Lock()
        self._completions_waiting = asyncio.Event()
        self._completions_full = asyncio.Event()
        self._flush_at = max(1, concurrency)
        self._refill_at = max(1, self.claim_batch // 2)
        self._refill_timer: asyncio.TimerHandle | None = None
        self._next_queue = 0
        self._backlog = False
        self._claimer = _Dedicated(db)
        self._completer = _Dedicated(db)
        self._stopping = asyncio.Event()
        self._listener: PgListener | None = None

    async def run(self) -> None:
        """Work until `stop()`; then finish running jobs within the grace period and give the
        rest back."""
        loops = [
            asyncio.create_task(self._heartbeats(), name="keel-jobs-heartbeat"),
            asyncio.create_task(self._rescuer(), name="keel-jobs-rescuer"),
            asyncio.create_task(self._scheduler(), name="keel-jobs-scheduler"),
            asyncio.create_task(self._flusher(), name="keel-jobs-completions"),
        ]
        await self._listen()
        try:
            await self._claim_loop()
        finally:
            await self._drain()
            # What finished during the drain, retried for as long as the grace period.
            await self._flush_before(asyncio.get_running_loop().time() + self.grace)
            for task in loops:
                task.cancel()
            for task in loops:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._unlisten()
            await self._claimer.close()
            await self._completer.close()

    def stop(self) -> None:
        """Stop claiming; `run()` then winds down."""
        self._stopping.set()
        wake_event().set()

    # --- claiming ----------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        wake = wake_event()
        loop = asyncio.get_running_loop()
        gathering_since: float | None = None
        while not self._stopping.is_set():
            free = min(self.concurrency - len(self._running), self.claim_batch)
            if len(self._completions) >= self.concurrency:
                free = 0  # completions are not being stored as fast as jobs finish: wait
            if 0 < free < self._refill_at and self._backlog:
                # Under a backlog, one claim for many freed slots costs far less than one per
                # slot; but a slot never waits more than REFILL_DELAY for its next job.
                if gathering_since is None:
                    gathering_since = loop.time()
                left = gathering_since + REFILL_DELAY - loop.time()
                if left > 0:
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), timeout=left)
                    continue
            gathering_since = None
            claimed: list[Claimed] = []
            if free > 0:
                try:
                    claimed = await self._claim(free)
                except Exception as exc:  # noqa: BLE001 - the database may be down a while
                    _logger.warning("claiming jobs failed", error=str(exc))
            now = datetime.now(UTC)
            for job in claimed:
                if self.metrics is not None:
                    self.metrics.wait.labels(job.queue).observe(
                        max(0.0, (now - job.run_at).total_seconds())
                    )
                self._start(job)
            if free > 0:
                # The claim filled every free slot: more jobs are likely waiting.
                self._backlog = len(claimed) == free
                if self._backlog:
                    continue
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=self.poll_interval)

    async def _claim(self, free: int) -> list[Claimed]:
        """Claim up to `free` jobs on the worker's claim connection. Each queue's claim
        commits by itself: if a later one fails, the jobs already claimed are still run."""
        claimed: list[Claimed] = []
        try:
            async with asyncio.timeout(KEPT_CONNECTION_TIMEOUT):
                connection = await self._claimer.get()
                await self._claim_on(connection, free, claimed)
                await self._claimer.done()
        except Exception as exc:
            await self._claimer.close()
            if not claimed:
                raise
            _logger.warning("claiming jobs failed part way", claimed=len(claimed), error=str(exc))
        return claimed

    async def _claim_on(
        self, connection: AsyncConnection | None, free: int, claimed: list[Claimed]
    ) -> None:
        """Claim up to `free` jobs into `claimed`, queue by queue (each claim commits by
        itself, so what is in `claimed` is ours even if a later queue's claim fails),
        honouring per-queue limits; the queue asked first turns round, so no queue's backlog
        starves another in this worker."""
        if not self.queues:
            return
        start = self._next_queue % len(self.queues)
        self._next_queue += 1
        for queue in self.queues[start:] + self.queues[:start]:
            room = free - len(claimed)
            if room <= 0:
                return
            limit = self.queue_limits.get(queue)
            if limit is not None:
                busy = sum(1 for name in self._queue_of.values() if name == queue)
                room = min(room, limit - busy)
            if room > 0:
                claimed += await claim(
                    self.db,
                    queues=[queue],
                    limit=room,
                    worker_id=self.worker_id,
                    lease=self.lease,
                    connection=connection,
                )

    def _start(self, job: Claimed) -> None:
        token = str(job.lease_token)
        context = JobContext(self.db, job, token)
        task = asyncio.create_task(self._execute(job, context), name=f"keel-job-{job.id}")
        self._running[job.id] = (task, context)
        self._queue_of[job.id] = job.queue
        job_id = job.id

        def finished(_task: asyncio.Task[None]) -> None:
            self._finished(job_id)

        task.add_done_callback(finished)

    def _finished(self, job_id: str) -> None:
        self._running.pop(job_id, None)
        self._queue_of.pop(job_id, None)
        self._cancel_deadlines.pop(job_id, None)
        # A slot is free. Under a backlog the claim loop is gathering freed slots on a timer
        # and need only be woken once enough are free.
        if not self._backlog or self.concurrency - len(self._running) >= self._refill_at:
            wake_event().set()
        elif self._refill_timer is None:
            # Too few free slots to claim for yet: claim for them within REFILL_DELAY anyway,
            # instead of leaving them idle until the next poll.
            self._refill_timer = asyncio.get_running_loop().call_later(
                REFILL_DELAY, self._refill_due
            )

    def _refill_due(self) -> None:
        self._refill_timer = None
        wake_event().set()

    # --- running -----------------------------------------------------------------------------
    async def _execute(self, job: Claimed, context: JobContext) -> None:
        started = asyncio.get_running_loop().time()
        try:
            await self._execute_traced(job, context)
        finally:
            if self.metrics is not None:
                outcome = "failed" if context._failure is not None else "completed"
                self.metrics.run_time.labels(job.kind, outcome).observe(
                    asyncio.get_running_loop().time() - started
                )
                if context._failure is not None:
                    self.metrics.failures.labels(job.kind, context._failure).inc()

    async def _execute_traced(self, job: Claimed, context: JobContext) -> None:
        spec = registered().get(job.kind)
        trace_token = set_trace(_trace_of(job.traceparent))
        actor_token = bind_actor(
            Actor("system", f"job:{job.id}", job.kind, job.tenant_id, job.origin)
        )
        try:
            if spec is None:
                await self._failed(
                    context, job, Failure("permanent", "UnknownKind", f"no job kind {job.kind!r}")
                )
                return
            await self._run(spec, job, context)
        finally:
            reset_actor(actor_token)
            reset_trace(trace_token)

    async def _run(self, spec: JobSpec, job: Claimed, context: JobContext) -> None:
        try:
            kwargs = spec.call_arguments(job.args)
            if spec.is_async:
                call = spec.func(context, **kwargs)
            else:
                call = asyncio.to_thread(spec.func, context, **kwargs)
            result = await asyncio.wait_for(call, timeout=job.timeout)
        except asyncio.CancelledError:
            if self._stopping.is_set() and not context.cancelled:
                raise  # shutdown: the lease is released by _drain
            await self._failed(context, job, Failure("cancelled", "Cancelled", "cancelled"))
            return
        except TimeoutError:
            await self._failed(
                context, job, Failure("timeout", "Timeout", f"ran longer than {job.timeout} s")
            )
            return
        except LeaseLost:
            return  # another attempt owns the job: write nothing
        except Exception as exc:  # noqa: BLE001 - every failure of a job is recorded
            await self._failed(context, job, _classify(exc))
            return
        progress, logs = context._take()
        self._record_completion(
            Done(job.id, context.attempt, context._token, _jsonable(result), progress, logs)
        )

    def _record_completion(self, done: Done) -> None:
        """Queue the completion for the next batched write. The job's slot frees at once
        (its handler is done); its lease stays until the write, which fences it as usual."""
        self._completions.append(done)
        self._completions_waiting.set()
        if len(self._completions) >= self._flush_at:
            self._completions_full.set()

    async def _flusher(self) -> None:
        """Write finished jobs' completions in batches: when half a batch is waiting, or
        FLUSH_DELAY after the first one."""
        pause = FLUSH_DELAY
        while True:
            await self._completions_waiting.wait()
            if len(self._completions) < self._flush_at:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._completions_full.wait(), timeout=FLUSH_DELAY)
            if await self._flush():
                pause = FLUSH_DELAY
            else:  # the batch is waiting again: retry, backing off while the database is away
                await asyncio.sleep(pause)
                pause = min(1.0, pause * 4)

    async def _flush(self) -> bool:
        """Write the waiting completions. False if the write failed: the batch then waits
        again (its leases still heartbeated), to be retried on a fresh connection; a row
        that did commit comes back fenced, so a retry never completes a job twice."""
        async with self._flush_lock:
            batch, self._completions = self._completions, []
            self._writing = batch
            self._completions_waiting.clear()
            self._completions_full.clear()
            if not batch:
                return True
            try:
                async with asyncio.timeout(KEPT_CONNECTION_TIMEOUT):
                    fenced = await complete_many(
                        self.db, batch, connection=await self._completer.get()
                    )
                    await self._completer.done()
            except Exception as exc:  # noqa: BLE001 - kept and retried
                await self._completer.close()
                self._completions[:0] = batch
                self._completions_waiting.set()
                _logger.warning("recording completions failed", jobs=len(batch), error=str(exc))
                return False
            finally:
                self._writing = []
                wake_event().set()  # claiming may have paused for this write
            for job_id in sorted(fenced):
                _logger.warning("completion fenced off: the lease was lost", job_id=job_id)
            return True

    async def _flush_before(self, deadline: float) -> None:
        """At shutdown: write what finished, retrying until `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        pause = FLUSH_DELAY
        while not await self._flush() and loop.time() < deadline:
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 4)

    async def _failed(self, context: JobContext, job: Claimed, failure: Failure) -> None:
        context._failure = failure.kind
        spec = registered().get(job.kind)
        delay = (
            failure.retry_after
            if failure.retry_after is not None
            else backoff(
                context.attempt,
                base=spec.backoff_base if spec else 1.0,
                cap=spec.backoff_cap if spec else 3600.0,
            )
        )
        _progress, logs = context._take()
        try:
            await fail(
                self.db,
                job.id,
                context.attempt,
                context._token,
                failure,
                max_attempts=job.max_attempts,
                delay=delay,
                logs=logs,
            )
        except Exception as exc:  # noqa: BLE001 - the rescuer will pick the job up
            _logger.warning("recording a failure failed", job_id=job.id, error=str(exc))

    # --- leases ------------------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        interval = min(1.0, self.lease.total_seconds() / 3)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            running = list(self._running.items())
            # Finished jobs whose completion is not written yet keep their leases too, or a
            # slow or failing write would let the rescuer run a finished job again.
            unwritten = [*self._writing, *self._completions]
            if not running and not unwritten:
                continue
            leases = [Lease(d.job_id, d.attempt, d.token) for d in unwritten]
            for job_id, (_task, context) in running:
                progress, logs = context._take()
                leases.append(Lease(job_id, context.attempt, context._token, progress, logs))
            try:
                beats = await heartbeat_many(self.db, leases, lease=self.lease)
            except Exception as exc:  # noqa: BLE001 - retried next beat
                _logger.warning("heartbeat failed", error=str(exc))
                self._give_back(leases)
                continue
            self._give_back(
                [
                    item
                    for item in leases
                    if beats[item.job_id].owned and not beats[item.job_id].written
                ]
            )
            for job_id, (task, context) in running:
                beat = beats.get(job_id)
                if beat is None:
                    continue
                if not beat.owned:
                    task.cancel()  # another attempt owns it; our writes are fenced anyway
                elif beat.cancel_requested and not context.cancelled:
                    context._request_cancel()
                    self._cancel_deadlines[job_id] = loop.time() + self.cancel_grace
                deadline = self._cancel_deadlines.get(job_id)
                if deadline is not None and loop.time() > deadline and not task.done():
                    task.cancel()  # the hard stop after the cancel grace period

    def _give_back(self, leases: list[Lease]) -> None:
        """Return the progress and log lines a heartbeat took but did not store (its write
        failed, or skipped a row another transaction held), so the next write carries them:
        to the job if it is still running, else to its completion if that is still waiting
        to be written."""
        for item in leases:
            if item.progress is None and not item.logs:
                continue
            running = self._running.get(item.job_id)
            if running is not None and running[1].attempt == item.attempt:
                running[1]._give_back(item.progress, list(item.logs))
                continue
            for index, done in enumerate(self._completions):
                if done.job_id == item.job_id and done.attempt == item.attempt:
                    self._completions[index] = replace(
                        done,
                        progress=done.progress or item.progress,
                        logs=[*item.logs, *done.logs],
                    )
                    break

    async def _rescuer(self) -> None:
        interval = max(1.0, self.lease.total_seconds() / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                if await rescue(self.db):
                    wake_event().set()
            except Exception as exc:  # noqa: BLE001 - retried next round
                _logger.warning("rescuing jobs failed", error=str(exc))

    async def _scheduler(self) -> None:
        """Cron slots every second; retention pruning every `PRUNE_INTERVAL` (read each
        round, so a changed setting applies at once)."""
        seen: dict[str, datetime] = {}
        loop = asyncio.get_running_loop()
        last_prune = last_depth = float("-inf")
        while True:
            try:
                if await enqueue_due(self.db, seen=seen):
                    wake_event().set()
                if self.metrics is not None and loop.time() - last_depth >= DEPTH_INTERVAL:
                    last_depth = loop.time()
                    await self.metrics.refresh_depth(self.db)
                if loop.time() - last_prune >= PRUNE_INTERVAL.value.total_seconds():
                    last_prune = loop.time()
                    await prune_finished(
                        self.db,
                        completed_after=self.completed_retention,
                        failed_after=self.failed_retention,
                    )
                    await prune_slots(self.db)
            except Exception as exc:  # noqa: BLE001 - retried next round
                _logger.warning("scheduling jobs failed", error=str(exc))
            await asyncio.sleep(1.0)

    async def _drain(self) -> None:
        running = list(self._running.items())
        if not running:
            return
        tasks = [task for task, _context in self._running.values()]
        _done, pending = await asyncio.wait(tasks, timeout=self.grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for job_id, (task, context) in running:
            if task in pending:
                with contextlib.suppress(Exception):
                    await release(self.db, job_id, context.attempt, context._token)

    # --- notifications -----------------------------------------------------------------------
    async def _listen(self) -> None:
        if self.db.dialect != "postgresql":
            return
        # A reconnecting LISTEN connection with keepalives: a dropped or half-open connection
        # is reopened, and a reconnect wakes the claimer (notices may have been missed).
        self._listener = PgListener(
            self.db.url,
            (CHANNEL,),
            lambda _channel, _payload: wake_event().set(),
            on_reconnect=wake_event().set,
        )
        if not await self._listener.start():
            _logger.warning("LISTEN not connected yet; polling until it is")

    async def _unlisten(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None


def _classify(exc: BaseException) -> Failure:
    text = "".join(traceback.format_exception(exc, limit=8))[-4000:]
    kind = "permanent" if isinstance(exc, Permanent) else "transient"
    if type(exc).__name__ == "DependencyUnavailable":
        kind = "dependency_unavailable"
    retry_after = exc.retry_after if isinstance(exc, Transient) else None
    return Failure(kind, type(exc).__name__, str(exc)[:2000], text, retry_after)


def _jsonable(value: Any) -> Any:
    """The result as JSON data (what does not serialise becomes its text), so one job's odd
    result can never fail the batch its completion is written with."""
    if value is None or isinstance(value, str | int | bool):
        return value
    try:
        return json.loads(json.dumps(value, default=str, allow_nan=False))
    except Exception:  # noqa: BLE001 - an odd result must never fail its job's completion
        try:
            return str(value)
        except Exception:  # noqa: BLE001 - not even text: say so
            return f"<{type(value).__name__} result that cannot be shown>"
