"""core: the instance table

Revision ID: 0001_core_instance
Revises:
Create Date: 2026-11-22 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_core_instance"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "keel_instance",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("singleton", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by_version", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_instance")),
        sa.UniqueConstraint("singleton", name=op.f("uq_keel_instance_singleton")),
        sa.CheckConstraint("singleton = 1", name=op.f("ck_keel_instance_one_row")),
    )


def downgrade() -> None:
    op.drop_table("keel_instance")
