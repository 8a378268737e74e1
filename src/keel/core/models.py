"""Tables owned by the core: the identity of this Keel deployment."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.database import Base, UTCDateTime

__all__ = ["ChangeVersion", "Instance"]


class Instance(Base):
    """One row: this deployment's id and when its database was first created."""

    __tablename__ = "keel_instance"
    __table_args__ = (CheckConstraint("singleton = 1", name="one_row"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Two processes starting at once on an empty database must not both create an identity.
    singleton: Mapped[int] = mapped_column(Integer, unique=True, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by_version: Mapped[str] = mapped_column(String(32))


class ChangeVersion(Base):
    """How many committed transactions announced a change of each topic (keel.core.changes):
    the version a watcher polls when a notice may have been lost."""

    __tablename__ = "keel_change_versions"

    topic: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger())
