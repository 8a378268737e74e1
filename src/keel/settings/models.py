"""Settings tables: the current overrides (one row per key and scope) and their history."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.database import Base, UTCDateTime

__all__ = ["GLOBAL", "SettingChange", "SettingOverride"]

GLOBAL = ""
"""The `scope` of a deployment-wide override (a tenant override's scope is its tenant id)."""


class SettingOverride(Base):
    """An override of a setting, deployment-wide or for one tenant.

    `value` holds the JSON text, or `ciphertext` the keyring-encrypted JSON of a secret.
    """

    __tablename__ = "keel_settings"
    __table_args__ = (UniqueConstraint("key", "scope", name="uq_keel_settings_key_scope"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(36))
    tenant_id: Mapped[str | None] = mapped_column(String(36), default=None)
    value: Mapped[str | None] = mapped_column(Text, default=None)
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    change_id: Mapped[str] = mapped_column(String(36))
    """The history entry that set this value."""


class SettingChange(Base):
    """One change of an override: what it was before and after, who, when and why.

    A missing before/after (both columns null) means "no override". Secrets keep only
    ciphertexts, so history can roll them back without ever showing them.
    """

    __tablename__ = "keel_setting_changes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(36))
    tenant_id: Mapped[str | None] = mapped_column(String(36), default=None)
    action: Mapped[str] = mapped_column(String(10))  # set | unset | rollback
    before: Mapped[str | None] = mapped_column(Text, default=None)
    after: Mapped[str | None] = mapped_column(Text, default=None)
    before_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    after_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor_id: Mapped[str | None] = mapped_column(String(64), default=None)
    actor_label: Mapped[str] = mapped_column(String(320), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    rolled_back_to: Mapped[str | None] = mapped_column(String(36), default=None)


Index("ix_keel_setting_changes_key_at", SettingChange.key, SettingChange.at)
