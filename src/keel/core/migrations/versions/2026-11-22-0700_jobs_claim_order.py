"""jobs: the claim index covers the claim's whole ORDER BY (priority, run_at, id)

Without `id` in the index, PostgreSQL sorted the whole claimable backlog on every claim and
SQLite built a temporary B-tree for the tie-break.

Revision ID: 0010_jobs_claim_order
Revises: 0009_jobs
Create Date: 2026-11-22 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_jobs_claim_order"
down_revision: str | None = "0009_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CLAIMABLE = "state IN ('scheduled', 'available', 'retryable')"


def _claim_index(columns: list[str]) -> None:
    op.drop_index("ix_keel_jobs_claim", table_name="keel_jobs")
    op.create_index(
        "ix_keel_jobs_claim",
        "keel_jobs",
        columns,
        postgresql_where=sa.text(_CLAIMABLE),
        sqlite_where=sa.text(_CLAIMABLE),
    )


def upgrade() -> None:
    _claim_index(["queue", "priority", "run_at", "id"])


def downgrade() -> None:
    _claim_index(["queue", "priority", "run_at"])
