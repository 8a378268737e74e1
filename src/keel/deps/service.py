"""The monitor's logic: record a probe (rollups, streak, automatic incidents), maintenance
windows, operators' incident actions, and the uptime arithmetic behind the status page."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.service import record
from keel.core.errors import NotFound, ValidationFailed
from keel.core.ids import new_id
from keel.deps.models import (
    ApiSlot,
    ComponentState,
    Incident,
    IncidentUpdate,
    Maintenance,
    ProbeResult,
    ProbeRollup,
)

__all__ = [
    "IMPACTS",
    "PERIODS",
    "RAW_RETENTION",
    "ROLLUP_RETENTION",
    "Uptime",
    "add_maintenance",
    "add_update",
    "in_maintenance",
    "open_incident",
    "prune",
    "record_probe",
    "resolve_incident",
    "sla",
    "uptime",
    "window_start",
]

IMPACTS = ("none", "minor", "major", "critical")
PERIODS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
RAW_RETENTION = timedelta(hours=48)
ROLLUP_RETENTION = {
    "minute": timedelta(hours=48),
    "hour": timedelta(days=8),
    "day": timedelta(days=400),
}


def period_start(at: datetime, period: str) -> datetime:
    """The start of the minute, hour or (UTC) day holding `at`."""
    at = at.astimezone(UTC)
    if period == "minute":
        return at.replace(second=0, microsecond=0)
    if period == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


# --- maintenance -----------------------------------------------------------------------------
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed(f"unknown time zone {name!r}") from None


def window_active(window: Maintenance, at: datetime) -> bool:
    """Whether the maintenance window covers the moment `at`."""
    if window.cron:
        local = at.astimezone(_zone(window.tz))
        started = croniter(window.cron, local + timedelta(microseconds=1)).get_prev(datetime)
        return bool(local < started + timedelta(minutes=window.minutes or 0))
    if window.starts_at is None or window.ends_at is None:
        return False
    return window.starts_at <= at < window.ends_at


async def in_maintenance(session: AsyncSession, component: str, at: datetime) -> Maintenance | None:
    """The maintenance window covering `component` at `at`, if any."""
    # unscoped: maintenance windows are deployment-wide.
    windows = await session.scalars(
        select(Maintenance).where(
            (Maintenance.component.is_(None)) | (Maintenance.component == component)
        )
    )
    return next((w for w in windows if window_active(w, at)), None)


async def add_maintenance(
    session: AsyncSession,
    *,
    title: str,
    component: str | None = None,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    cron: str | None = None,
    tz: str = "UTC",
    minutes: int | None = None,
) -> Maintenance:
    """A one-off (`starts_at`..`ends_at`) or recurring (`cron` in `tz` for `minutes`) window."""
    if cron:
        if not croniter.is_valid(cron):
            raise ValidationFailed(f"{cron!r} is not a cron expression")
        if not minutes or minutes < 1:
            raise ValidationFailed("a recurring window needs its length in minutes (>= 1)")
        _zone(tz)
        starts_at = ends_at = None
    else:
        if starts_at is None or ends_at is None:
            raise ValidationFailed("a one-off window needs starts_at and ends_at")
        if starts_at.tzinfo is None or ends_at.tzinfo is None:
            raise ValidationFailed("starts_at and ends_at need a time zone offset")
        if ends_at <= starts_at:
            raise ValidationFailed("ends_at must be after starts_at")
    if not title.strip():
        raise ValidationFailed("a maintenance window needs a title")
    window = Maintenance(
        id=new_id(),
        component=component,
        title=title.strip()[:200],
        starts_at=starts_at,
        ends_at=ends_at,
        cron=cron,
        tz=tz,
        minutes=minutes,
        created_at=datetime.now(UTC),
    )
    session.add(window)
    await session.flush()
    await record(
        session,
        "maintenance.create",
        resource=("maintenance", window.id),
        after={"title": window.title, "component": component, "cron": cron},
    )
    return window


# --- incidents -------------------------------------------------------------------------------
async def _timeline(
    session: AsyncSession, incident: Incident, kind: str, message: str, at: datetime
) -> None:
    session.add(IncidentUpdate(incident_id=incident.id, at=at, kind=kind, message=message))


async def open_incident(
    session: AsyncSession,
    *,
    title: str,
    impact: str = "major",
    component: str | None = None,
    message: str | None = None,
    automatic: bool = False,
    at: datetime | None = None,
) -> Incident:
    """Open an incident (any number may be open at once)."""
    if impact not in IMPACTS:
        raise ValidationFailed(f"impact must be one of {', '.join(IMPACTS)}")
    if not title.strip():
        raise ValidationFailed("an incident needs a title")
    at = at or datetime.now(UTC)
    incident = Incident(
        id=new_id(),
        component=component,
        title=title.strip()[:200],
        impact=impact,
        state="open",
        automatic=automatic,
        opened_at=at,
    )
    session.add(incident)
    await session.flush()
    await _timeline(session, incident, "opened", message or title, at)
    await record(
        session,
        "incident.open",
        resource=("incident", incident.id),
        after={"title": incident.title, "impact": impact, "automatic": automatic},
    )
    return incident


async def get_incident(session: AsyncSession, incident_id: str) -> Incident:
    """The incident, or NotFound."""
    # unscoped: incidents are deployment-wide.
    incident = await session.get(Incident, incident_id)
    if incident is None:
        raise NotFound(f"no incident {incident_id!r}")
    return incident


async def add_update(
    session: AsyncSession, incident_id: str, message: str, *, impact: str | None = None
) -> Incident:
    """Append an operator's update to the timeline, optionally changing the impact."""
    incident = await get_incident(session, incident_id)
    if not message.strip():
        raise ValidationFailed("an update needs a message")
    if impact is not None and impact not in IMPACTS:
        raise ValidationFailed(f"impact must be one of {', '.join(IMPACTS)}")
    now = datetime.now(UTC)
    before = incident.impact
    if impact is not None and impact != incident.impact:
        incident.impact = impact
        await _timeline(session, incident, "impact", f"impact: {before} → {impact}", now)
    await _timeline(session, incident, "update", message.strip(), now)
    await record(
        session,
        "incident.update",
        resource=("incident", incident.id),
        before={"impact": before},
        after={"impact": incident.impact},
    )
    return incident


async def resolve_incident(
    session: AsyncSession, incident_id: str, message: str, *, at: datetime | None = None
) -> Incident:
    """Resolve an open incident."""
    incident = await get_incident(session, incident_id)
    if incident.state == "resolved":
        raise ValidationFailed("the incident is already resolved")
    at = at or datetime.now(UTC)
    incident.state, incident.resolved_at = "resolved", at
    await _timeline(session, incident, "resolved", message, at)
    await record(session, "incident.resolve", resource=("incident", incident.id))
    return incident


async def set_postmortem(session: AsyncSession, incident_id: str, text: str) -> Incident:
    """Write (or rewrite) the incident's post-mortem; each version stays in the timeline."""
    incident = await get_incident(session, incident_id)
    if not text.strip():
        raise ValidationFailed("a post-mortem needs text")
    incident.postmortem = text.strip()
    await _timeline(session, incident, "postmortem", incident.postmortem, datetime.now(UTC))
    await record(session, "incident.postmortem", resource=("incident", incident.id))
    return incident


# --- probes ------------------------------------------------------------------------------------
async def _bump_rollup(session: AsyncSession, component: str, at: datetime, ok: bool) -> None:
    """Count one probe in its minute, hour and day (the row is made by the first probe)."""
    for period in PERIODS:
        start = period_start(at, period)
        bump = (
            update(ProbeRollup)
            .where(
                ProbeRollup.component == component,
                ProbeRollup.period == period,
                ProbeRollup.start == start,
            )
            .values(good=ProbeRollup.good + (1 if ok else 0), total=ProbeRollup.total + 1)
        )
        if getattr(await session.execute(bump), "rowcount", 0):
            continue
        try:
            async with session.begin_nested():
                session.add(
                    ProbeRollup(
                        component=component,
                        period=period,
                        start=start,
                        good=1 if ok else 0,
                        total=1,
                    )
                )
        except IntegrityError:  # another probe made the row meanwhile
            await session.execute(bump)


async def record_probe(
    session: AsyncSession,
    component: str,
    *,
    ok: bool,
    latency_ms: float | None,
    detail: str | None,
    failures_to_open: int = 3,
    successes_to_close: int = 2,
    title: str | None = None,
    at: datetime | None = None,
) -> Incident | None:
    """Store a probe result, count it in the rollups (unless in maintenance), and open or
    close the component's automatic incident by its streak. Returns an incident it opened."""
    at = at or datetime.now(UTC)
    window = await in_maintenance(session, component, at)
    session.add(
        ProbeResult(
            component=component,
            at=at,
            ok=ok,
            latency_ms=latency_ms,
            detail=(detail or "")[:500] or None,
            maintenance=window is not None,
        )
    )
    if window is None:
        await _bump_rollup(session, component, at, ok)
    query = select(ComponentState).where(ComponentState.component == component)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        query = query.with_for_update()
    state = await session.scalar(query)
    if state is None:
        state = ComponentState(component=component, failures=0, successes=0)
        session.add(state)
    state.last_ok, state.last_at = ok, at
    if ok:
        state.successes, state.failures = (state.successes or 0) + 1, 0
    else:
        state.failures, state.successes = (state.failures or 0) + 1, 0
    opened = None
    if not ok and state.incident_id is None and window is None:
        if state.failures >= failures_to_open:
            opened = await open_incident(
                session,
                title=f"{title or component} is unavailable",
                component=component,
                message="Automatic checks are failing; we are investigating.",
                automatic=True,
                at=at,
            )
            state.incident_id = opened.id
    elif ok and state.incident_id is not None and state.successes >= successes_to_close:
        incident = await session.get(Incident, state.incident_id)
        if incident is not None and incident.state == "open":
            await resolve_incident(
                session, incident.id, "Automatic checks pass again; resolved.", at=at
            )
        state.incident_id = None
    await session.flush()
    return opened


async def prune(session: AsyncSession, *, now: datetime | None = None) -> None:
    """Drop raw probes after RAW_RETENTION and rollups after their period's retention."""
    now = now or datetime.now(UTC)
    # unscoped: monitor data is deployment-wide.
    await session.execute(delete(ProbeResult).where(ProbeResult.at < now - RAW_RETENTION))
    await session.execute(delete(ApiSlot).where(ApiSlot.start < now - RAW_RETENTION))
    for period, keep in ROLLUP_RETENTION.items():
        await session.execute(
            delete(ProbeRollup).where(ProbeRollup.period == period, ProbeRollup.start < now - keep)
        )


# --- uptime ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Uptime:
    """Good and total probes over a window; `percent` is None when nothing was observed."""

    good: int
    total: int

    @property
    def percent(self) -> float | None:
        """good / total in percent, rounded DOWN to 3 decimals (exact decimal arithmetic):
        never shown higher than achieved, so 99.98999 % reads 99.989, not 99.99, and a
        shown 100.0 means no probe failed."""
        if self.total == 0:
            return None
        exact = Decimal(self.good) * 100 / Decimal(self.total)
        return float(exact.quantize(Decimal("0.001"), rounding=ROUND_FLOOR))


async def uptime(
    session: AsyncSession, component: str, *, since: datetime, period: str = "day"
) -> tuple[Uptime, list[tuple[datetime, Uptime]]]:
    """Uptime of `component` since `since` from `period` rollups: the total and one bar per
    period start (periods without probes are absent: no data, not 100 %)."""
    # unscoped: monitor data is deployment-wide.
    rows = await session.execute(
        select(ProbeRollup.start, ProbeRollup.good, ProbeRollup.total)
        .where(
            ProbeRollup.component == component,
            ProbeRollup.period == period,
            ProbeRollup.start >= period_start(since, period),
        )
        .order_by(ProbeRollup.start)
    )
    bars = [(start, Uptime(good, total)) for start, good, total in rows]
    return Uptime(sum(b.good for _, b in bars), sum(b.total for _, b in bars)), bars


def window_start(now: datetime, count: int, period: str = "day") -> datetime:
    """The start of a window of `count` whole periods ending with the current one (today, or
    this hour, included)."""
    return period_start(now, period) - PERIODS[period] * (count - 1)


def budget_left(up: Uptime, target: float) -> float | None:
    """The share (0-1) of the error budget left at `target` percent, None with no data:
    `total * (100 - target) / 100` failed probes are allowed (exact decimal arithmetic)."""
    if up.total == 0:
        return None
    allowed = Decimal(up.total) * (100 - Decimal(str(target))) / 100
    failed = up.total - up.good
    if allowed <= 0:
        return 0.0 if failed else 1.0
    return float(max(Decimal(0), 1 - failed / allowed).quantize(Decimal("0.0001")))


def sla(up: Uptime, target: float, window_days: int) -> dict[str, Any]:
    """An SLA line: the target, its window, what was achieved, whether it is met and the
    error budget left (None for all three without probes)."""
    met = None
    if up.total:
        met = Decimal(up.good) * 100 >= Decimal(str(target)) * up.total
    return {
        "target": target,
        "window_days": window_days,
        "achieved": up.percent,
        "met": met,
        "budget_left": budget_left(up, target),
    }


async def open_incidents(session: AsyncSession) -> Sequence[Incident]:
    """Open incidents, newest first."""
    # unscoped: incidents are deployment-wide.
    return list(
        await session.scalars(
            select(Incident).where(Incident.state == "open").order_by(Incident.opened_at.desc())
        )
    )


async def timelines(
    session: AsyncSession, incident_ids: Sequence[str]
) -> dict[str, list[IncidentUpdate]]:
    """Each incident's timeline, oldest first."""
    if not incident_ids:
        return {}
    # unscoped: incidents are deployment-wide.
    found: dict[str, list[IncidentUpdate]] = {i: [] for i in incident_ids}
    for entry in await session.scalars(
        select(IncidentUpdate)
        .where(IncidentUpdate.incident_id.in_(incident_ids))
        .order_by(IncidentUpdate.at, IncidentUpdate.id)
    ):
        found[entry.incident_id].append(entry)
    return found


def as_dict(incident: Incident, entries: Sequence[IncidentUpdate]) -> dict[str, Any]:
    """An incident with its public timeline, as JSON data."""
    return {
        "id": incident.id,
        "title": incident.title,
        "impact": incident.impact,
        "state": incident.state,
        "opened_at": incident.opened_at.isoformat(),
        "resolved_at": incident.resolved_at.isoformat() if incident.resolved_at else None,
        "postmortem": incident.postmortem,
        "updates": [
            {"at": e.at.isoformat(), "kind": e.kind, "message": e.message}
            for e in entries
            if e.public
        ],
    }


async def remove_maintenance(session: AsyncSession, window_id: str) -> None:
    """Delete a maintenance window (audited)."""
    # unscoped: maintenance windows are deployment-wide.
    window = await session.get(Maintenance, window_id)
    if window is None:
        raise NotFound(f"no maintenance window {window_id!r}")
    await session.delete(window)
    await record(
        session,
        "maintenance.delete",
        resource=("maintenance", window_id),
        before={"title": window.title},
    )
