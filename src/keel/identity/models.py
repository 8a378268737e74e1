"""Identity tables: users, tenants, roles, API keys, share links, signing keys, refresh
tokens and revocations (sessions and login throttling keep theirs beside their logic)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.database import Base, UTCDateTime

__all__ = [
    "ApiKey",
    "RefreshToken",
    "Revocation",
    "Role",
    "RoleAssignment",
    "ShareLink",
    "ShareUse",
    "SigningKey",
    "Tenant",
    "User",
    "UserStatus",
]


class UserStatus:
    """The states a user can be in."""

    ACTIVE = "active"
    DISABLED = "disabled"
    ALL = (ACTIVE, DISABLED)


class User(Base):
    """A person (or service) that can sign in."""

    __tablename__ = "keel_users"
    __table_args__ = (CheckConstraint("status IN ('active', 'disabled')", name="status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Stored normalised (trimmed, lower-case): uniqueness is case-insensitive on both dialects.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=UserStatus.ACTIVE)
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # None: a deployment-level account (acts in every tenant its roles allow).
    tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("keel_tenants.id", ondelete="RESTRICT"), index=True, default=None
    )


class Tenant(Base):
    """An organisation whose users and data are isolated from other tenants."""

    __tablename__ = "keel_tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Role(Base):
    """A custom role: a named set of declared permissions, in one tenant or deployment-wide."""

    __tablename__ = "keel_roles"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("keel_tenants.id", ondelete="CASCADE"), index=True, default=None
    )
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(String(500), default="")
    permissions: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


# A role name is unique within its tenant, and among deployment-wide roles (NULL tenant).
Index("uq_keel_roles_scope_name", func.coalesce(Role.tenant_id, ""), Role.name, unique=True)


class RoleAssignment(Base):
    """A user holds a role (built-in by name, or a custom role of its tenant)."""

    __tablename__ = "keel_role_assignments"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("keel_users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(63), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """A long-lived credential for scripts and services: shown once, stored as a digest."""

    __tablename__ = "keel_api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    # None: a tenant service-account key (acts in `tenant_id` with its scopes only).
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("keel_users.id", ondelete="CASCADE"), index=True, default=None
    )
    tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("keel_tenants.id", ondelete="CASCADE"), index=True, default=None
    )
    created_by: Mapped[str | None] = mapped_column(String(36), default=None)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class ShareLink(Base):
    """One resource shared by a user with a subset of its permissions."""

    __tablename__ = "keel_share_links"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(
        ForeignKey("keel_users.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("keel_tenants.id", ondelete="CASCADE"), index=True, default=None
    )
    resource_type: Mapped[str] = mapped_column(String(63))
    resource_id: Mapped[str] = mapped_column(String(200))
    permissions: Mapped[list[str]] = mapped_column(JSON)
    note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    max_uses: Mapped[int | None] = mapped_column(Integer, default=None)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class ShareUse(Base):
    """One use of a share link."""

    __tablename__ = "keel_share_uses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    share_id: Mapped[str] = mapped_column(
        ForeignKey("keel_share_links.id", ondelete="CASCADE"), index=True
    )
    used_at: Mapped[datetime] = mapped_column(UTCDateTime())
    client_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(300), default=None)
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(500))


class SigningKey(Base):
    """An Ed25519 key pair that signs access tokens; the private half encrypted by the keyring."""

    __tablename__ = "keel_signing_keys"

    kid: Mapped[str] = mapped_column(String(36), primary_key=True)
    private_key: Mapped[bytes] = mapped_column(LargeBinary)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class RefreshToken(Base):
    """One refresh token; all tokens descending from one sign-in share a `family_id`."""

    __tablename__ = "keel_refresh_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(
        ForeignKey("keel_users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    family_started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoked_reason: Mapped[str | None] = mapped_column(String(32), default=None)


class Revocation(Base):
    """A revoked token id, refresh family, API key or a user-wide cut-off (`subject`).

    Every process holds these in memory and polls for new rows (`id > last seen`); a row is
    pruned once `expires_at` has passed (nothing it covers can still be valid).
    """

    __tablename__ = "keel_revocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
