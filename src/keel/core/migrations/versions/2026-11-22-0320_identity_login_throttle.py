"""identity: login throttle and login attempts

Revision ID: 0004_identity_login_throttle
Revises: 0003_core_data_keys
Create Date: 2026-11-22 03:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_identity_login_throttle"
down_revision: str | None = "0003_core_data_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "keel_login_throttle",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_keel_login_throttle")),
    )
    op.create_table(
        "keel_login_attempts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_login_attempts")),
    )
    op.create_index(op.f("ix_keel_login_attempts_at"), "keel_login_attempts", ["at"])
    op.create_index(op.f("ix_keel_login_attempts_email"), "keel_login_attempts", ["email"])


def downgrade() -> None:
    op.drop_index(op.f("ix_keel_login_attempts_email"), table_name="keel_login_attempts")
    op.drop_index(op.f("ix_keel_login_attempts_at"), table_name="keel_login_attempts")
    op.drop_table("keel_login_attempts")
    op.drop_table("keel_login_throttle")
