"""audit: the action index serves prefix filters on PostgreSQL (text_pattern_ops)

The events list filters `action` by prefix (`action LIKE 'user.%'`). Under any collation but C,
PostgreSQL cannot use a plain btree index for that; with the `text_pattern_ops` operator class
it can (and still serves `=`). SQLite's index stays as it is.

Revision ID: 0011_audit_action_prefix
Revises: 0010_jobs_claim_order
Create Date: 2026-11-22 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011_audit_action_prefix"
down_revision: str | None = "0010_jobs_claim_order"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _action_index(ops: dict[str, str]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_keel_audit_events_action", table_name="keel_audit_events")
    op.create_index(
        "ix_keel_audit_events_action",
        "keel_audit_events",
        ["action", "id"],
        postgresql_ops=ops,
    )


def upgrade() -> None:
    _action_index({"action": "text_pattern_ops"})


def downgrade() -> None:
    _action_index({})
