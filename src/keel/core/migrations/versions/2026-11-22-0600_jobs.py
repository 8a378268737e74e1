"""jobs: jobs, attempts and log lines

Revision ID: 0009_jobs
Revises: 0008_audit_events
Create Date: 2026-11-22 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_jobs"
down_revision: str | None = "0008_audit_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_STATES = (
    "'scheduled', 'available', 'running', 'retryable', 'cancelling', 'completed', "
    "'cancelled', 'discarded'"
)
_CLAIMABLE = "state IN ('scheduled', 'available', 'retryable')"
_LEASED = "state IN ('running', 'cancelling')"
_ACTIVE = (
    "idempotency_key IS NOT NULL AND state IN "
    "('scheduled', 'available', 'retryable', 'running', 'cancelling')"
)


def upgrade() -> None:
    op.create_table(
        "keel_jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("queue", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(200), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("run_at", _TS, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("timeout", sa.Float(), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("lease_token", sa.String(36), nullable=True),
        sa.Column("lease_expires_at", _TS, nullable=True),
        sa.Column("worker_id", sa.String(100), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("cancel_requested_at", _TS, nullable=True),
        sa.Column("progress_done", sa.Float(), nullable=True),
        sa.Column("progress_total", sa.Float(), nullable=True),
        sa.Column("progress_message", sa.String(500), nullable=True),
        sa.Column("logs_dropped", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("traceparent", sa.String(55), nullable=True),
        sa.Column("origin", sa.String(200), nullable=True),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.CheckConstraint(f"state IN ({_STATES})", name=op.f("ck_keel_jobs_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_jobs")),
    )
    op.create_index(
        "ix_keel_jobs_claim",
        "keel_jobs",
        ["queue", "priority", "run_at"],
        postgresql_where=sa.text(_CLAIMABLE),
        sqlite_where=sa.text(_CLAIMABLE),
    )
    op.create_index(
        "ix_keel_jobs_lease",
        "keel_jobs",
        ["lease_expires_at"],
        postgresql_where=sa.text(_LEASED),
        sqlite_where=sa.text(_LEASED),
    )
    op.create_index(
        "uq_keel_jobs_idempotency",
        "keel_jobs",
        ["queue", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text(_ACTIVE),
        sqlite_where=sa.text(_ACTIVE),
    )
    op.create_index("ix_keel_jobs_state_id", "keel_jobs", ["state", "id"])
    op.create_index("ix_keel_jobs_kind_id", "keel_jobs", ["kind", "id"])
    op.create_table(
        "keel_job_attempts",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("attempt", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("worker_id", sa.String(100), nullable=True),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("failure_class", sa.String(32), nullable=True),
        sa.Column("error_type", sa.String(200), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["keel_jobs.id"],
            name=op.f("fk_keel_job_attempts_job_id_keel_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "attempt", name=op.f("pk_keel_job_attempts")),
    )
    op.create_table(
        "keel_job_logs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("level", sa.String(10), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["keel_jobs.id"],
            name=op.f("fk_keel_job_logs_job_id_keel_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_job_logs")),
    )
    op.create_index(op.f("ix_keel_job_logs_job_id"), "keel_job_logs", ["job_id"])
    op.create_table(
        "keel_job_effects",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["keel_jobs.id"],
            name=op.f("fk_keel_job_effects_job_id_keel_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "key", name=op.f("pk_keel_job_effects")),
    )
    op.create_table(
        "keel_cron_slots",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("slot", _TS, nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("name", "slot", name=op.f("pk_keel_cron_slots")),
    )


def downgrade() -> None:
    op.drop_table("keel_cron_slots")
    op.drop_table("keel_job_effects")
    op.drop_table("keel_job_logs")
    op.drop_table("keel_job_attempts")
    op.drop_table("keel_jobs")
