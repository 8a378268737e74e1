"""Audit tables: the events (append-only, hash-chained once sealed), the signed checkpoints,
the checkpoint signing key, and the anchor left by pruning."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, LargeBinary, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.database import Base, UTCDateTime

__all__ = [
    "CONTENT_COLUMNS",
    "AuditAnchor",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditKey",
    "AuditPruneFlag",
]


class AuditEvent(Base):
    """One recorded change or sensitive read."""

    __tablename__ = "keel_audit_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(64), default=None)
    actor_label: Mapped[str] = mapped_column(String(320), default="")
    origin: Mapped[str | None] = mapped_column(String(200), default=None)
    tenant_id: Mapped[str | None] = mapped_column(String(36), default=None)
    action: Mapped[str] = mapped_column(String(100))
    resource_type: Mapped[str | None] = mapped_column(String(63), default=None)
    resource_id: Mapped[str | None] = mapped_column(String(200), default=None)
    outcome: Mapped[str] = mapped_column(String(16))
    changes: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    trace_id: Mapped[str | None] = mapped_column(String(32), default=None)
    span_id: Mapped[str | None] = mapped_column(String(16), default=None)
    client_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(300), default=None)
    # The chain, set once by the sealer.
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True, default=None)
    prev_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    hash: Mapped[str | None] = mapped_column(String(64), default=None)
    sealed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


CONTENT_COLUMNS = (
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
"""The columns an event's hash covers (with `seq`), which nothing may change."""

Index(
    "ix_keel_audit_events_unsealed",
    AuditEvent.id,
    postgresql_where=text("seq IS NULL"),
    sqlite_where=text("seq IS NULL"),
)
Index("ix_keel_audit_events_tenant", AuditEvent.tenant_id, AuditEvent.id)
Index("ix_keel_audit_events_actor", AuditEvent.actor_id, AuditEvent.id)
# Prefix filters (`action LIKE 'user.%'`) use it on PostgreSQL whatever the collation.
Index(
    "ix_keel_audit_events_action",
    AuditEvent.action,
    AuditEvent.id,
    postgresql_ops={"action": "text_pattern_ops"},
)
Index(
    "ix_keel_audit_events_resource",
    AuditEvent.resource_type,
    AuditEvent.resource_id,
    AuditEvent.id,
)
Index("ix_keel_audit_events_trace", AuditEvent.trace_id)


class AuditCheckpoint(Base):
    """A signed statement that the chain's event `seq` had hash `hash`."""

    __tablename__ = "keel_audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    kid: Mapped[str] = mapped_column(String(36))
    signature: Mapped[str] = mapped_column(String(128))


class AuditKey(Base):
    """The Ed25519 key that signs checkpoints; the private half encrypted by the keyring."""

    __tablename__ = "keel_audit_keys"

    kid: Mapped[str] = mapped_column(String(36), primary_key=True)
    private_key: Mapped[bytes] = mapped_column(LargeBinary)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditAnchor(Base):
    """Where the chain starts after pruning: the last pruned event's `seq` and `hash`."""

    __tablename__ = "keel_audit_anchor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    pruned_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditPruneFlag(Base):
    """Present only inside the pruning transaction: the delete trigger lets rows go then."""

    __tablename__ = "keel_audit_prune_flag"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
