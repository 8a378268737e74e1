"""Tables owned by the core: the identity of this Keel deployment."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.database import Base

__all__ = ["Instance"]


class Instance(Base):
    """One row: this deployment's id and when its database was first created."""

    __tablename__ = "keel_instance"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by_version: Mapped[str] = mapped_column(String(32))
