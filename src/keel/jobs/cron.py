"""Cron schedules: one job per schedule slot, however many schedulers run.

Every worker runs the scheduler. For each schedule it computes the latest slot at or before
now (in the schedule's time zone); a new slot is enqueued in a transaction that also inserts
`(name, slot)` into `keel_cron_slots`, whose primary key lets exactly one scheduler win.
After downtime, `missed="once"` runs the latest missed slot once; `missed="skip"` runs a slot
only if it is less than `tolerance` old.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.database import Database
from keel.jobs.models import CronSlot
from keel.jobs.registry import get_spec, job
from keel.jobs.service import enqueue

__all__ = ["Schedule", "claim_slot", "cron", "enqueue_due", "enqueue_once", "schedule", "schedules"]

SLOT_RETENTION = timedelta(days=35)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A named cron expression that enqueues `kind` with `args`."""

    name: str
    expression: str
    kind: str
    args: Mapping[str, Any] = field(default_factory=dict)
    tz: str = "UTC"
    missed: Literal["once", "skip"] = "once"
    tolerance: timedelta = timedelta(minutes=1)

    def latest_slot(self, now: datetime) -> datetime:
        """The latest slot at or before `now`, in UTC."""
        local = now.astimezone(ZoneInfo(self.tz))
        slot: datetime = croniter(self.expression, local + timedelta(microseconds=1)).get_prev(
            datetime
        )
        return slot.astimezone(UTC)


_SCHEDULES: dict[str, Schedule] = {}


def schedule(
    name: str,
    expression: str,
    kind: str,
    args: Mapping[str, Any] | None = None,
    *,
    tz: str = "UTC",
    missed: Literal["once", "skip"] = "once",
) -> Schedule:
    """Register (or replace) a schedule at runtime; its kind must be registered and its
    arguments valid."""
    if not croniter.is_valid(expression):
        raise ValueError(f"{expression!r} is not a cron expression")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}") from None
    if missed not in ("once", "skip"):
        raise ValueError("missed must be 'once' or 'skip'")
    get_spec(kind).validate(args or {})
    entry = Schedule(name, expression, kind, dict(args or {}), tz, missed)
    _SCHEDULES[name] = entry
    return entry


def cron(
    expression: str,
    *,
    tz: str = "UTC",
    name: str | None = None,
    missed: Literal["once", "skip"] = "once",
    **job_options: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `func(ctx)` as a job kind and run it on `expression` (`@cron("0 3 * * *",
    tz="Asia/Seoul")`)."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        kind = name or f"cron.{func.__module__}.{func.__qualname__}"
        job(kind, **job_options)(func)
        schedule(kind, expression, kind, tz=tz, missed=missed)
        return func

    return register


def schedules() -> dict[str, Schedule]:
    """Every registered schedule."""
    return dict(_SCHEDULES)


async def enqueue_once(
    db: Database,
    name: str,
    slot: datetime,
    kind: str,
    args: Mapping[str, Any],
    *,
    now: datetime | None = None,
) -> bool:
    """Enqueue `kind(args)` for the slot `(name, slot)` unless any process already did: the
    slot table's primary key lets exactly one win. Returns whether this call enqueued it."""
    now = now or datetime.now(UTC)
    try:
        async with db.transaction() as session:
            async with session.begin_nested():
                session.add(CronSlot(name=name, slot=slot, job_id="", created_at=now))
            created = await enqueue(session, kind, args)
            row = await session.get(CronSlot, (name, slot))
            if row is not None:
                row.job_id = created.id
    except IntegrityError:
        return False  # another scheduler enqueued this slot
    return True


async def claim_slot(
    session: AsyncSession, name: str, slot: datetime, *, now: datetime | None = None
) -> bool:
    """Claim `(name, slot)` in the slot table inside the caller's transaction: exactly one
    claim of a slot commits, however many processes try. Returns whether this one won (the
    caller's transaction goes on either way)."""
    try:
        async with session.begin_nested():
            session.add(
                CronSlot(name=name, slot=slot, job_id="", created_at=now or datetime.now(UTC))
            )
    except IntegrityError:
        return False
    return True


async def enqueue_due(
    db: Database, *, now: datetime | None = None, seen: dict[str, datetime] | None = None
) -> int:
    """Enqueue the latest due slot of every schedule not enqueued yet; returns how many.
    `seen` (per scheduler) skips slots this scheduler already handled without a query."""
    now = now or datetime.now(UTC)
    made = 0
    for entry in list(_SCHEDULES.values()):
        slot = entry.latest_slot(now)
        if seen is not None and seen.get(entry.name) == slot:
            continue
        if entry.missed == "skip" and now - slot > entry.tolerance:
            if seen is not None:
                seen[entry.name] = slot
            continue
        if await enqueue_once(db, entry.name, slot, entry.kind, entry.args, now=now):
            made += 1
        if seen is not None:
            seen[entry.name] = slot
    return made


async def prune_slots(db: Database, *, now: datetime | None = None) -> None:
    """Forget slots older than `SLOT_RETENTION` (a schedule never looks that far back)."""
    now = now or datetime.now(UTC)
    async with db.transaction() as session:
        await session.execute(delete(CronSlot).where(CronSlot.created_at < now - SLOT_RETENTION))
