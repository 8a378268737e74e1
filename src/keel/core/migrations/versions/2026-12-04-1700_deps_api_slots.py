"""deps: per-slot reports of the API component from every serving process

Revision ID: 0014_deps_api_slots
Revises: 0013_deps_monitor
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_deps_api_slots"
down_revision: str | None = "0013_deps_monitor"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "keel_dep_api_slots",
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("not_ready", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("start", name=op.f("pk_keel_dep_api_slots")),
    )


def downgrade() -> None:
    op.drop_table("keel_dep_api_slots")
