"""core: a committed-change counter per change-notice topic

Revision ID: 0017_core_change_versions
Revises: 0016_settings
Create Date: 2026-12-04 18:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_core_change_versions"
down_revision: str | None = "0016_settings"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "keel_change_versions",
        sa.Column("topic", sa.String(63), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", name=op.f("pk_keel_change_versions")),
    )


def downgrade() -> None:
    op.drop_table("keel_change_versions")
