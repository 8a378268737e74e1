"""identity: tenants, roles, API keys, share links, signing keys, refresh tokens, revocations

Revision ID: 0007_identity_access
Revises: 0006_identity_setup_tokens
Create Date: 2026-11-22 04:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_identity_access"
down_revision: str | None = "0006_identity_setup_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str, ondelete: str = "CASCADE") -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column],
        [f"{target}.id"],
        name=op.f(f"fk_{table}_{column}_{target}"),
        ondelete=ondelete,
    )


def upgrade() -> None:
    op.create_table(
        "keel_tenants",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("slug", sa.String(63), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_tenants")),
        sa.UniqueConstraint("slug", name=op.f("uq_keel_tenants_slug")),
    )
    with op.batch_alter_table("keel_users") as batch:
        batch.add_column(sa.Column("tenant_id", sa.String(36), nullable=True))
        batch.create_foreign_key(
            op.f("fk_keel_users_tenant_id_keel_tenants"),
            "keel_tenants",
            ["tenant_id"],
            ["id"],
            ondelete="RESTRICT",
        )
        batch.create_index(op.f("ix_keel_users_tenant_id"), ["tenant_id"])

    op.create_table(
        "keel_roles",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        _fk("keel_roles", "tenant_id", "keel_tenants"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_roles")),
    )
    op.create_index(op.f("ix_keel_roles_tenant_id"), "keel_roles", ["tenant_id"])
    op.create_index(
        "uq_keel_roles_scope_name",
        "keel_roles",
        [sa.text("coalesce(tenant_id, '')"), "name"],
        unique=True,
    )

    op.create_table(
        "keel_role_assignments",
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("role", sa.String(63), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        _fk("keel_role_assignments", "user_id", "keel_users"),
        sa.PrimaryKeyConstraint("user_id", "role", name=op.f("pk_keel_role_assignments")),
    )

    op.create_table(
        "keel_api_keys",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=True),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.Column("created_by", sa.String(36), nullable=True),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("last_used_at", _TS, nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        _fk("keel_api_keys", "user_id", "keel_users"),
        _fk("keel_api_keys", "tenant_id", "keel_tenants"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_keel_api_keys_prefix")),
    )
    op.create_index(op.f("ix_keel_api_keys_user_id"), "keel_api_keys", ["user_id"])
    op.create_index(op.f("ix_keel_api_keys_tenant_id"), "keel_api_keys", ["tenant_id"])

    op.create_table(
        "keel_share_links",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.Column("resource_type", sa.String(63), nullable=False),
        sa.Column("resource_id", sa.String(200), nullable=False),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["keel_users.id"],
            name=op.f("fk_keel_share_links_created_by_keel_users"),
            ondelete="CASCADE",
        ),
        _fk("keel_share_links", "tenant_id", "keel_tenants"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_share_links")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_keel_share_links_token_hash")),
    )
    op.create_index(op.f("ix_keel_share_links_created_by"), "keel_share_links", ["created_by"])
    op.create_index(op.f("ix_keel_share_links_tenant_id"), "keel_share_links", ["tenant_id"])

    op.create_table(
        "keel_share_uses",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("share_id", sa.String(36), nullable=False),
        sa.Column("used_at", _TS, nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(300), nullable=True),
        sa.Column("method", sa.String(10), nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        _fk("keel_share_uses", "share_id", "keel_share_links"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_share_uses")),
    )
    op.create_index(op.f("ix_keel_share_uses_share_id"), "keel_share_uses", ["share_id"])

    op.create_table(
        "keel_signing_keys",
        sa.Column("kid", sa.String(36), nullable=False),
        sa.Column("private_key", sa.LargeBinary(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("retired_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_keel_signing_keys")),
    )

    op.create_table(
        "keel_refresh_tokens",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("family_id", sa.String(36), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("family_started_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("used_at", _TS, nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("revoked_reason", sa.String(32), nullable=True),
        _fk("keel_refresh_tokens", "user_id", "keel_users"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_refresh_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_keel_refresh_tokens_token_hash")),
    )
    op.create_index(op.f("ix_keel_refresh_tokens_family_id"), "keel_refresh_tokens", ["family_id"])
    op.create_index(op.f("ix_keel_refresh_tokens_user_id"), "keel_refresh_tokens", ["user_id"])

    op.create_table(
        "keel_revocations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_revocations")),
    )
    op.create_index(op.f("ix_keel_revocations_expires_at"), "keel_revocations", ["expires_at"])


def downgrade() -> None:
    for table in (
        "keel_revocations",
        "keel_refresh_tokens",
        "keel_signing_keys",
        "keel_share_uses",
        "keel_share_links",
        "keel_api_keys",
        "keel_role_assignments",
        "keel_roles",
    ):
        op.drop_table(table)
    with op.batch_alter_table("keel_users") as batch:
        batch.drop_index(op.f("ix_keel_users_tenant_id"))
        batch.drop_constraint(op.f("fk_keel_users_tenant_id_keel_tenants"), type_="foreignkey")
        batch.drop_column("tenant_id")
    op.drop_table("keel_tenants")
