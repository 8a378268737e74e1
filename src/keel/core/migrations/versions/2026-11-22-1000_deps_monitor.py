"""deps: probe results and rollups, component streaks, incidents and their timelines,
maintenance windows

Revision ID: 0013_deps_monitor
Revises: 0012_jobs_lean_attempts
Create Date: 2026-11-22 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_deps_monitor"
down_revision: str | None = "0012_jobs_lean_attempts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "keel_dep_probes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("component", sa.String(63), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("detail", sa.String(500), nullable=True),
        sa.Column("maintenance", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_dep_probes")),
    )
    op.create_index(
        "ix_keel_dep_probes_component_at", "keel_dep_probes", ["component", "at"], unique=False
    )
    op.create_table(
        "keel_dep_rollups",
        sa.Column("component", sa.String(63), nullable=False),
        sa.Column("period", sa.String(6), nullable=False),
        sa.Column("start", _TS, nullable=False),
        sa.Column("good", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("component", "period", "start", name=op.f("pk_keel_dep_rollups")),
    )
    op.create_table(
        "keel_dep_components",
        sa.Column("component", sa.String(63), nullable=False),
        sa.Column("last_ok", sa.Boolean(), nullable=True),
        sa.Column("last_at", _TS, nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("incident_id", sa.String(36), nullable=True),
        sa.PrimaryKeyConstraint("component", name=op.f("pk_keel_dep_components")),
    )
    op.create_table(
        "keel_incidents",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("component", sa.String(63), nullable=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("impact", sa.String(10), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("automatic", sa.Boolean(), nullable=False),
        sa.Column("opened_at", _TS, nullable=False),
        sa.Column("resolved_at", _TS, nullable=True),
        sa.Column("postmortem", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_incidents")),
    )
    op.create_index("ix_keel_incidents_opened_at", "keel_incidents", ["opened_at"], unique=False)
    op.create_table(
        "keel_incident_updates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("incident_id", sa.String(36), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["keel_incidents.id"],
            name=op.f("fk_keel_incident_updates_incident_id_keel_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_incident_updates")),
    )
    op.create_index(
        op.f("ix_keel_incident_updates_incident_id"),
        "keel_incident_updates",
        ["incident_id"],
        unique=False,
    )
    op.create_table(
        "keel_maintenance",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("component", sa.String(63), nullable=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("starts_at", _TS, nullable=True),
        sa.Column("ends_at", _TS, nullable=True),
        sa.Column("cron", sa.String(100), nullable=True),
        sa.Column("tz", sa.String(64), nullable=False),
        sa.Column("minutes", sa.Integer(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_maintenance")),
    )


def downgrade() -> None:
    op.drop_table("keel_maintenance")
    op.drop_index(op.f("ix_keel_incident_updates_incident_id"), table_name="keel_incident_updates")
    op.drop_table("keel_incident_updates")
    op.drop_index("ix_keel_incidents_opened_at", table_name="keel_incidents")
    op.drop_table("keel_incidents")
    op.drop_table("keel_dep_components")
    op.drop_table("keel_dep_rollups")
    op.drop_index("ix_keel_dep_probes_component_at", table_name="keel_dep_probes")
    op.drop_table("keel_dep_probes")
