"""registry: assets with their head pointer, immutable versions (at most one published per
asset), references and the history of transitions

Revision ID: 0015_registry
Revises: 0014_deps_api_slots
Create Date: 2026-12-04 17:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_registry"
down_revision: str | None = "0014_deps_api_slots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "keel_registry_assets",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(63), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("head_id", sa.String(36), nullable=True),
        sa.Column("latest", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["keel_tenants.id"],
            name=op.f("fk_keel_registry_assets_tenant_id_keel_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_registry_assets")),
    )
    op.create_index(
        op.f("ix_keel_registry_assets_tenant_id"), "keel_registry_assets", ["tenant_id"]
    )
    op.create_index(
        "uq_keel_registry_assets_scope_name",
        "keel_registry_assets",
        ["kind", sa.text("coalesce(tenant_id, '')"), "name"],
        unique=True,
    )
    op.create_table(
        "keel_registry_versions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("asset_id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("problems", sa.JSON(), nullable=True),
        sa.Column("rollback_of", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("published_at", _TS, nullable=True),
        sa.Column("published_by", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["keel_registry_assets.id"],
            name=op.f("fk_keel_registry_versions_asset_id_keel_registry_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_registry_versions")),
    )
    op.create_index(
        "uq_keel_registry_versions_number",
        "keel_registry_versions",
        ["asset_id", "number"],
        unique=True,
    )
    op.create_index(
        "uq_keel_registry_versions_published",
        "keel_registry_versions",
        ["asset_id"],
        unique=True,
        postgresql_where=sa.text("state = 'published'"),
        sqlite_where=sa.text("state = 'published'"),
    )
    op.create_table(
        "keel_registry_refs",
        sa.Column("version_id", sa.String(36), nullable=False),
        sa.Column("target_kind", sa.String(63), nullable=False),
        sa.Column("target_name", sa.String(200), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["keel_registry_versions.id"],
            name=op.f("fk_keel_registry_refs_version_id_keel_registry_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "version_id", "target_kind", "target_name", name=op.f("pk_keel_registry_refs")
        ),
    )
    op.create_index(
        "ix_keel_registry_refs_target", "keel_registry_refs", ["target_kind", "target_name"]
    )
    op.create_table(
        "keel_registry_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("asset_id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["keel_registry_assets.id"],
            name=op.f("fk_keel_registry_history_asset_id_keel_registry_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_registry_history")),
    )
    op.create_index(
        op.f("ix_keel_registry_history_asset_id"), "keel_registry_history", ["asset_id"]
    )


def downgrade() -> None:
    op.drop_table("keel_registry_history")
    op.drop_table("keel_registry_refs")
    op.drop_table("keel_registry_versions")
    op.drop_table("keel_registry_assets")
