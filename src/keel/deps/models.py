"""Monitor tables: probe results (raw, bounded), their per-minute/hour/day rollups, each
component's probe streak, incidents with their append-only timelines, maintenance windows."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.database import Base, UTCDateTime

__all__ = [
    "ApiSlot",
    "ComponentState",
    "Incident",
    "IncidentUpdate",
    "Maintenance",
    "ProbeResult",
    "ProbeRollup",
]


class ProbeResult(Base):
    """One probe of a component (kept `RAW_RETENTION`; `detail` is for operators only)."""

    __tablename__ = "keel_dep_probes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    component: Mapped[str] = mapped_column(String(63))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    ok: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[float | None] = mapped_column(Float, default=None)
    detail: Mapped[str | None] = mapped_column(String(500), default=None)
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False)


Index("ix_keel_dep_probes_component_at", ProbeResult.component, ProbeResult.at)


class ProbeRollup(Base):
    """Good and total probes of a component in one minute, hour or day (maintenance excluded)."""

    __tablename__ = "keel_dep_rollups"

    component: Mapped[str] = mapped_column(String(63), primary_key=True)
    period: Mapped[str] = mapped_column(String(6), primary_key=True)  # minute | hour | day
    start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    good: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)


class ComponentState(Base):
    """A component's current probe streak and its automatic incident, if one is open."""

    __tablename__ = "keel_dep_components"

    component: Mapped[str] = mapped_column(String(63), primary_key=True)
    last_ok: Mapped[bool | None] = mapped_column(Boolean, default=None)
    last_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    successes: Mapped[int] = mapped_column(Integer, default=0)
    incident_id: Mapped[str | None] = mapped_column(String(36), default=None)


class Incident(Base):
    """An incident: opened by the monitor or an operator; any number may be open at once."""

    __tablename__ = "keel_incidents"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    component: Mapped[str | None] = mapped_column(String(63), default=None)
    title: Mapped[str] = mapped_column(String(200))
    impact: Mapped[str] = mapped_column(String(10))  # none | minor | major | critical
    state: Mapped[str] = mapped_column(String(10))  # open | resolved
    automatic: Mapped[bool] = mapped_column(Boolean, default=False)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    postmortem: Mapped[str | None] = mapped_column(Text, default=None)


Index("ix_keel_incidents_opened_at", Incident.opened_at)


class IncidentUpdate(Base):
    """One entry of an incident's timeline (never changed once written)."""

    __tablename__ = "keel_incident_updates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[str] = mapped_column(
        ForeignKey("keel_incidents.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(12))  # opened|update|impact|resolved|postmortem
    message: Mapped[str] = mapped_column(Text)
    public: Mapped[bool] = mapped_column(Boolean, default=True)


class Maintenance(Base):
    """A maintenance window: one-off (`starts_at`..`ends_at`) or recurring (`cron` in `tz`,
    lasting `minutes`); `component` None means every component."""

    __tablename__ = "keel_maintenance"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    component: Mapped[str | None] = mapped_column(String(63), default=None)
    title: Mapped[str] = mapped_column(String(200))
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    cron: Mapped[str | None] = mapped_column(String(100), default=None)
    tz: Mapped[str] = mapped_column(String(64), default="UTC")
    minutes: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiSlot(Base):
    """What the serving processes saw of the API in one monitor slot, added up: how many
    reported, how many of them were not ready, requests answered and how many were 5xx."""

    __tablename__ = "keel_dep_api_slots"

    start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    reports: Mapped[int] = mapped_column(Integer, default=0)
    not_ready: Mapped[int] = mapped_column(Integer, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
