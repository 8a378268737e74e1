"""settings: current overrides (per key and scope) and their change history

Revision ID: 0016_settings
Revises: 0015_registry
Create Date: 2026-12-04 17:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_settings"
down_revision: str | None = "0015_registry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "keel_settings",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("scope", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("change_id", sa.String(36), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_settings")),
        sa.UniqueConstraint("key", "scope", name="uq_keel_settings_key_scope"),
    )
    op.create_table(
        "keel_setting_changes",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("scope", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.Column("action", sa.String(10), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("before_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("after_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor_id", sa.String(64), nullable=True),
        sa.Column("actor_label", sa.String(320), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("rolled_back_to", sa.String(36), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_setting_changes")),
    )
    op.create_index(
        "ix_keel_setting_changes_key_at", "keel_setting_changes", ["key", "at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_keel_setting_changes_key_at", table_name="keel_setting_changes")
    op.drop_table("keel_setting_changes")
    op.drop_table("keel_settings")
