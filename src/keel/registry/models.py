"""Registry tables: assets (with their head pointer), immutable numbered versions, the
references each version makes, and the append-only history of transitions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.database import Base, UTCDateTime

__all__ = ["Asset", "AssetState", "Reference", "Transition", "Version", "VersionState"]


class AssetState:
    """The states of an asset."""

    ACTIVE = "active"
    ARCHIVED = "archived"


class VersionState:
    """The states of a version: draft → validated → published → retired."""

    DRAFT = "draft"
    VALIDATED = "validated"
    PUBLISHED = "published"
    RETIRED = "retired"


class Asset(Base):
    """A named definition of one kind, in one tenant (None: deployment-wide)."""

    __tablename__ = "keel_registry_assets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(200))
    tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("keel_tenants.id", ondelete="RESTRICT"), index=True, default=None
    )
    state: Mapped[str] = mapped_column(String(10), default=AssetState.ACTIVE)
    head_id: Mapped[str | None] = mapped_column(String(36), default=None)
    """The published version (None: nothing published)."""
    latest: Mapped[int] = mapped_column(Integer, default=0)
    """The highest version number (numbers are allocated from it under the row lock)."""
    revision: Mapped[int] = mapped_column(Integer, default=0)
    """Bumped by every transition (a count of them; races are decided by the row lock and
    a publish's `expected_head`)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


# An asset's name is unique per kind within its tenant, and among deployment-wide assets.
Index(
    "uq_keel_registry_assets_scope_name",
    Asset.kind,
    func.coalesce(Asset.tenant_id, ""),
    Asset.name,
    unique=True,
)


class Version(Base):
    """One immutable version of an asset's content; only its state moves forward."""

    __tablename__ = "keel_registry_versions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    asset_id: Mapped[str] = mapped_column(ForeignKey("keel_registry_assets.id", ondelete="CASCADE"))
    tenant_id: Mapped[str | None] = mapped_column(String(36), default=None)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(10), default=VersionState.DRAFT)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    problems: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    """What the last validation found (None: never validated)."""
    rollback_of: Mapped[int | None] = mapped_column(Integer, default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    published_by: Mapped[str | None] = mapped_column(String(200), default=None)


Index("uq_keel_registry_versions_number", Version.asset_id, Version.number, unique=True)
# The database itself holds at most one published version per asset.
Index(
    "uq_keel_registry_versions_published",
    Version.asset_id,
    unique=True,
    postgresql_where=text("state = 'published'"),
    sqlite_where=text("state = 'published'"),
)


class Reference(Base):
    """A version names another asset (kind and name, same tenant)."""

    __tablename__ = "keel_registry_refs"

    version_id: Mapped[str] = mapped_column(
        ForeignKey("keel_registry_versions.id", ondelete="CASCADE"), primary_key=True
    )
    target_kind: Mapped[str] = mapped_column(String(63), primary_key=True)
    target_name: Mapped[str] = mapped_column(String(200), primary_key=True)


Index("ix_keel_registry_refs_target", Reference.target_kind, Reference.target_name)


class Transition(Base):
    """Who did what to an asset, when and why (never changed once written)."""

    __tablename__ = "keel_registry_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    asset_id: Mapped[str] = mapped_column(
        ForeignKey("keel_registry_assets.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[str | None] = mapped_column(String(36), default=None)
    action: Mapped[str] = mapped_column(String(20))
    version: Mapped[int | None] = mapped_column(Integer, default=None)
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
