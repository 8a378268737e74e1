"""audit: hash-chained events, checkpoints, signing key, anchor; append-only triggers

Revision ID: 0008_audit_events
Revises: 0007_identity_access
Create Date: 2026-11-22 05:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_audit_events"
down_revision: str | None = "0007_identity_access"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
# The columns the hash covers: no UPDATE may change them, ever.
_CONTENT = (
    "id",
    "recorded_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "origin",
    "tenant_id",
    "action",
    "resource_type",
    "resource_id",
    "outcome",
    "changes",
    "reason",
    "trace_id",
    "span_id",
    "client_ip",
    "user_agent",
)
_MESSAGE = "keel_audit_events is append-only"


def upgrade() -> None:
    op.create_table(
        "keel_audit_events",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("recorded_at", _TS, nullable=False),
        sa.Column("actor_type", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.String(64), nullable=True),
        sa.Column("actor_label", sa.String(320), nullable=False),
        sa.Column("origin", sa.String(200), nullable=True),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("resource_type", sa.String(63), nullable=True),
        sa.Column("resource_id", sa.String(200), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("span_id", sa.String(16), nullable=True),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(300), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=True),
        sa.Column("hash", sa.String(64), nullable=True),
        sa.Column("sealed_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_audit_events")),
        sa.UniqueConstraint("seq", name=op.f("uq_keel_audit_events_seq")),
    )
    op.create_index(op.f("ix_keel_audit_events_recorded_at"), "keel_audit_events", ["recorded_at"])
    op.create_index(
        "ix_keel_audit_events_unsealed",
        "keel_audit_events",
        ["id"],
        postgresql_where=sa.text("seq IS NULL"),
        sqlite_where=sa.text("seq IS NULL"),
    )
    op.create_index("ix_keel_audit_events_tenant", "keel_audit_events", ["tenant_id", "id"])
    op.create_index("ix_keel_audit_events_actor", "keel_audit_events", ["actor_id", "id"])
    op.create_index("ix_keel_audit_events_action", "keel_audit_events", ["action", "id"])
    op.create_index(
        "ix_keel_audit_events_resource",
        "keel_audit_events",
        ["resource_type", "resource_id", "id"],
    )
    op.create_index("ix_keel_audit_events_trace", "keel_audit_events", ["trace_id"])
    op.create_table(
        "keel_audit_checkpoints",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("kid", sa.String(36), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_keel_audit_checkpoints")),
    )
    op.create_table(
        "keel_audit_keys",
        sa.Column("kid", sa.String(36), nullable=False),
        sa.Column("private_key", sa.LargeBinary(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_keel_audit_keys")),
    )
    op.create_table(
        "keel_audit_anchor",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("pruned_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_audit_anchor")),
    )
    op.create_table(
        "keel_audit_prune_flag",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_audit_prune_flag")),
    )
    if op.get_bind().dialect.name == "postgresql":
        _postgres_guards()
    else:
        _sqlite_guards()


def _postgres_guards() -> None:
    changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in _CONTENT if c != "changes")
    op.execute(
        f"""
        CREATE FUNCTION keel_audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP = 'DELETE' THEN
            IF EXISTS (SELECT 1 FROM keel_audit_prune_flag) THEN
              RETURN OLD;
            END IF;
            RAISE EXCEPTION '{_MESSAGE}';
          END IF;
          IF OLD.hash IS NOT NULL OR NEW.hash IS NULL OR NEW.seq IS NULL
             OR {changed} OR NEW.changes::text IS DISTINCT FROM OLD.changes::text THEN
            RAISE EXCEPTION '{_MESSAGE}';
          END IF;
          RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER keel_audit_guard BEFORE UPDATE OR DELETE ON keel_audit_events "
        "FOR EACH ROW EXECUTE FUNCTION keel_audit_guard()"
    )
    op.execute(
        f"""
        CREATE FUNCTION keel_audit_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '{_MESSAGE}'; END $$
        """
    )
    op.execute(
        "CREATE TRIGGER keel_audit_no_truncate BEFORE TRUNCATE ON keel_audit_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION keel_audit_no_truncate()"
    )


def _sqlite_guards() -> None:
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in _CONTENT)
    op.execute(
        f"""
        CREATE TRIGGER keel_audit_seal_only BEFORE UPDATE ON keel_audit_events
        WHEN OLD.hash IS NOT NULL OR NEW.hash IS NULL OR NEW.seq IS NULL OR {changed}
        BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER keel_audit_no_delete BEFORE DELETE ON keel_audit_events
        WHEN NOT EXISTS (SELECT 1 FROM keel_audit_prune_flag)
        BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS keel_audit_no_truncate ON keel_audit_events")
        op.execute("DROP TRIGGER IF EXISTS keel_audit_guard ON keel_audit_events")
        op.execute("DROP FUNCTION IF EXISTS keel_audit_no_truncate()")
        op.execute("DROP FUNCTION IF EXISTS keel_audit_guard()")
    for table in (
        "keel_audit_prune_flag",
        "keel_audit_anchor",
        "keel_audit_keys",
        "keel_audit_checkpoints",
        "keel_audit_events",
    ):
        op.drop_table(table)
