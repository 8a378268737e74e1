"""identity: first-owner setup tokens

Revision ID: 0006_identity_setup_tokens
Revises: 0005_identity_sessions
Create Date: 2026-11-22 03:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_identity_setup_tokens"
down_revision: str | None = "0005_identity_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "keel_setup_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_by_user_id", sa.String(length=36), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_keel_setup_tokens")),
    )


def downgrade() -> None:
    op.drop_table("keel_setup_tokens")
