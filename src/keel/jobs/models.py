"""Job tables: the jobs (hot: live work and recent history), their attempts and log lines."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.database import Base, UTCDateTime

__all__ = [
    "ACTIVE",
    "CLAIMABLE",
    "TERMINAL",
    "CronSlot",
    "Job",
    "JobAttempt",
    "JobEffect",
    "JobLog",
    "JobState",
]


class JobState:
    """The states of a job (see docs/jobs.md for the diagram)."""

    SCHEDULED = "scheduled"
    AVAILABLE = "available"
    RUNNING = "running"
    RETRYABLE = "retryable"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    DISCARDED = "discarded"
    ALL = (
        SCHEDULED,
        AVAILABLE,
        RUNNING,
        RETRYABLE,
        CANCELLING,
        COMPLETED,
        CANCELLED,
        DISCARDED,
    )


CLAIMABLE = (JobState.SCHEDULED, JobState.AVAILABLE, JobState.RETRYABLE)
ACTIVE = (*CLAIMABLE, JobState.RUNNING, JobState.CANCELLING)
TERMINAL = (JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED)
_STATES = ", ".join(f"'{state}'" for state in JobState.ALL)
_CLAIMABLE = ", ".join(f"'{state}'" for state in CLAIMABLE)
_ACTIVE = ", ".join(f"'{state}'" for state in ACTIVE)
_LEASED = "'running', 'cancelling'"


class Job(Base):
    """One unit of work and its current state."""

    __tablename__ = "keel_jobs"
    __table_args__ = (CheckConstraint(f"state IN ({_STATES})", name="state"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    queue: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(200))
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    timeout: Mapped[float | None] = mapped_column(Float, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_token: Mapped[str | None] = mapped_column(String(36), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    worker_id: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    progress_done: Mapped[float | None] = mapped_column(Float, default=None)
    progress_total: Mapped[float | None] = mapped_column(Float, default=None)
    progress_message: Mapped[str | None] = mapped_column(String(500), default=None)
    logs_dropped: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[Any | None] = mapped_column(JSON, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    traceparent: Mapped[str | None] = mapped_column(String(55), default=None)
    origin: Mapped[str | None] = mapped_column(String(200), default=None)
    tenant_id: Mapped[str | None] = mapped_column(String(36), default=None)


Index(
    "ix_keel_jobs_claim",
    Job.queue,
    Job.priority,
    Job.run_at,
    Job.id,
    postgresql_where=text(f"state IN ({_CLAIMABLE})"),
    sqlite_where=text(f"state IN ({_CLAIMABLE})"),
)
Index(
    "ix_keel_jobs_lease",
    Job.lease_expires_at,
    postgresql_where=text(f"state IN ({_LEASED})"),
    sqlite_where=text(f"state IN ({_LEASED})"),
)
Index(
    "uq_keel_jobs_idempotency",
    Job.queue,
    Job.idempotency_key,
    unique=True,
    postgresql_where=text(f"idempotency_key IS NOT NULL AND state IN ({_ACTIVE})"),
    sqlite_where=text(f"idempotency_key IS NOT NULL AND state IN ({_ACTIVE})"),
)
Index("ix_keel_jobs_state_id", Job.state, Job.id)
Index("ix_keel_jobs_kind_id", Job.kind, Job.id)


class JobAttempt(Base):
    """One run of a job: who ran it, when, and how it ended."""

    __tablename__ = "keel_job_attempts"

    # No foreign key: the claim inserts attempts for jobs it has just locked, and pruning
    # deletes a job's attempts with the job (a per-row check cost a third of a claim).
    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    worker_id: Mapped[str | None] = mapped_column(String(100), default=None)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    outcome: Mapped[str | None] = mapped_column(String(16), default=None)
    failure_class: Mapped[str | None] = mapped_column(String(32), default=None)
    error_type: Mapped[str | None] = mapped_column(String(200), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    traceback: Mapped[str | None] = mapped_column(Text, default=None)


class JobLog(Base):
    """A log line a job wrote (at most `MAX_LOG_LINES` are kept per job)."""

    __tablename__ = "keel_job_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("keel_jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    level: Mapped[str] = mapped_column(String(10))
    message: Mapped[str] = mapped_column(Text)


class JobEffect(Base):
    """A marker committed with a job's effect (`ctx.once`): the effect never commits twice."""

    __tablename__ = "keel_job_effects"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("keel_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class CronSlot(Base):
    """A schedule slot that has been enqueued: the primary key makes it exactly once, however
    many schedulers run."""

    __tablename__ = "keel_cron_slots"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    slot: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
