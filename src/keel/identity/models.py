"""Identity tables: users (sessions, tokens, keys and roles come later)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.database import Base, UTCDateTime

__all__ = ["User", "UserStatus"]


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
