"""core: wrapped data keys for the keyring

Revision ID: 0003_core_data_keys
Revises: 0002_identity_users
Create Date: 2026-11-22 03:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_core_data_keys"
down_revision: str | None = "0002_identity_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "keel_data_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_data_keys")),
    )


def downgrade() -> None:
    op.drop_table("keel_data_keys")
