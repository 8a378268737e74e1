"""identity: browser sessions

Revision ID: 0005_identity_sessions
Revises: 0004_identity_login_throttle
Create Date: 2026-11-22 03:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_identity_sessions"
down_revision: str | None = "0004_identity_login_throttle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "keel_sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["keel_users.id"],
            name=op.f("fk_keel_sessions_user_id_keel_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_keel_sessions_token_hash")),
    )
    op.create_index(op.f("ix_keel_sessions_user_id"), "keel_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_keel_sessions_user_id"), table_name="keel_sessions")
    op.drop_table("keel_sessions")
