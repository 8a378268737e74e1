"""jobs: attempts no longer carry a foreign key to their job

Every claim inserts one attempt row per job; on PostgreSQL the foreign-key trigger that checks
each new row against `keel_jobs` was about a third of a claim's server time. Attempts are only
written by the claim (which has just locked the job) and only deleted by pruning, which now
deletes a job's attempts in the same transaction as the job, so the constraint guarded nothing
the code does not already guarantee.

Revision ID: 0012_jobs_lean_attempts
Revises: 0011_audit_action_prefix
Create Date: 2026-11-22 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012_jobs_lean_attempts"
down_revision: str | None = "0011_audit_action_prefix"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FK = "fk_keel_job_attempts_job_id_keel_jobs"


def upgrade() -> None:
    with op.batch_alter_table("keel_job_attempts") as batch:
        batch.drop_constraint(_FK, type_="foreignkey")


def downgrade() -> None:
    op.execute("DELETE FROM keel_job_attempts WHERE job_id NOT IN (SELECT id FROM keel_jobs)")
    with op.batch_alter_table("keel_job_attempts") as batch:
        batch.create_foreign_key(_FK, "keel_jobs", ["job_id"], ["id"], ondelete="CASCADE")
