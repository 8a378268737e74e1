"""Operators' routes: `/api/v1/dependencies` (live state), incidents and maintenance windows."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.config import redact_url
from keel.core.errors import Forbidden, NotFound, problem_responses
from keel.core.guards import register_guard
from keel.core.principal import Principal, require
from keel.deps import service
from keel.deps.client import runtime
from keel.deps.models import ComponentState, Incident, Maintenance, ProbeResult
from keel.deps.spec import declared

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["dependencies_router"]


def _deployment_level(permission: str, *, by_id: bool = False) -> Any:
    """`require(permission)`, for deployment-level accounts only: dependencies, incidents and
    maintenance span every tenant. A tenant's account gets 403 (404 for a route naming an
    id: it learns nothing about what exists)."""
    check = require(permission)

    async def guard(request: Request) -> Principal:
        principal = await check(request)
        if principal.tenant_id is not None:
            if by_id:
                raise NotFound()
            raise Forbidden("Dependencies and incidents are managed by deployment-level accounts.")
        return principal

    register_guard(guard, f"{permission} (deployment-level)")
    return Depends(guard)


Reader = Annotated[Principal, _deployment_level("dependencies:read")]
Writer = Annotated[Principal, _deployment_level("incidents:write")]
WriterById = Annotated[Principal, _deployment_level("incidents:write", by_id=True)]
Impact = Field(default="major", pattern="^(none|minor|major|critical)$")


class NewIncident(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    impact: str = Impact
    message: str | None = Field(default=None, max_length=5000)
    component: str | None = Field(default=None, max_length=63)


class IncidentNote(BaseModel):
    message: str = Field(min_length=1, max_length=5000)
    impact: str | None = Field(default=None, pattern="^(none|minor|major|critical)$")


class Postmortem(BaseModel):
    text: str = Field(min_length=1, max_length=50000)


class NewMaintenance(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    component: str | None = Field(default=None, max_length=63)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    cron: str | None = Field(default=None, max_length=100)
    tz: str = Field(default="UTC", max_length=64)
    minutes: int | None = Field(default=None, ge=1, le=10080)


def dependencies_router(keel: Keel) -> APIRouter:
    """Routes under /api/v1/dependencies, /api/v1/incidents and /api/v1/maintenance."""
    router = APIRouter(prefix="/api/v1", tags=["dependencies"])

    @router.get(
        "/dependencies",
        summary="Every declared dependency with its live state (breaker, in flight, probes)",
        responses=problem_responses(401, 403),
    )
    async def list_dependencies(principal: Reader) -> dict[str, Any]:
        rt = runtime()
        items = []
        async with keel.db.session() as session:
            # unscoped: dependencies are deployment-wide.
            states = {s.component: s for s in await session.scalars(select(ComponentState))}
            for name, dep in sorted(declared().items()):
                breaker = rt.breakers.get(name)
                bulkhead = rt.bulkheads.get(name)
                last = await session.scalar(
                    select(ProbeResult)
                    .where(ProbeResult.component == name)
                    .order_by(ProbeResult.at.desc())
                    .limit(1)
                )
                state = states.get(name)
                items.append(
                    {
                        "name": name,
                        "base_url": redact_url(dep.base_url),
                        "public_name": dep.public.name if dep.public else None,
                        "breaker": breaker.snapshot() if breaker else {"state": "closed"},
                        "in_flight": bulkhead.in_flight if bulkhead else 0,
                        "concurrency": dep.concurrency.limit,
                        "last_probe": None
                        if last is None
                        else {
                            "at": last.at.isoformat(),
                            "ok": last.ok,
                            "latency_ms": last.latency_ms,
                            "detail": last.detail,
                        },
                        "failing_streak": state.failures if state else 0,
                        "incident_id": state.incident_id if state else None,
                    }
                )
        return {"items": items}

    @router.get(
        "/incidents",
        summary="Incidents, newest first (open ones, or all)",
        responses=problem_responses(401, 403, 422),
    )
    async def list_incidents(
        principal: Reader, state: Annotated[str | None, Query(pattern="^(open|resolved)$")] = None
    ) -> dict[str, Any]:
        async with keel.db.session() as session:
            # unscoped: incidents are deployment-wide.
            query = select(Incident).order_by(Incident.opened_at.desc()).limit(200)
            if state:
                query = query.where(Incident.state == state)
            found = list(await session.scalars(query))
            entries = await service.timelines(session, [i.id for i in found])
            return {"items": [service.as_dict(i, entries[i.id]) for i in found]}

    @router.post(
        "/incidents",
        status_code=201,
        summary="Open an incident by hand",
        responses=problem_responses(401, 403, 422),
    )
    async def create_incident(body: NewIncident, principal: Writer) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            incident = await service.open_incident(
                session,
                title=body.title,
                impact=body.impact,
                component=body.component,
                message=body.message,
            )
            return await _shown(session, incident)

    @router.post(
        "/incidents/{incident_id}/updates",
        summary="Add an update to an incident's timeline (optionally a new impact)",
        responses=problem_responses(401, 403, 404, 422),
    )
    async def update_incident(
        incident_id: str, body: IncidentNote, principal: WriterById
    ) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            incident = await service.add_update(
                session, incident_id, body.message, impact=body.impact
            )
            return await _shown(session, incident)

    @router.post(
        "/incidents/{incident_id}/resolve",
        summary="Resolve an incident",
        responses=problem_responses(401, 403, 404, 422),
    )
    async def resolve(
        incident_id: str, body: IncidentNote, principal: WriterById
    ) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            incident = await service.resolve_incident(session, incident_id, body.message)
            return await _shown(session, incident)

    @router.put(
        "/incidents/{incident_id}/postmortem",
        summary="Write the incident's post-mortem",
        responses=problem_responses(401, 403, 404, 422),
    )
    async def postmortem(
        incident_id: str, body: Postmortem, principal: WriterById
    ) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            incident = await service.set_postmortem(session, incident_id, body.text)
            return await _shown(session, incident)

    @router.get(
        "/maintenance",
        summary="Maintenance windows",
        responses=problem_responses(401, 403),
    )
    async def list_maintenance(principal: Reader) -> dict[str, Any]:
        async with keel.db.session() as session:
            # unscoped: maintenance windows are deployment-wide.
            found = await session.scalars(select(Maintenance).order_by(Maintenance.created_at))
            return {"items": [window_as_dict(w) for w in found]}

    @router.post(
        "/maintenance",
        status_code=201,
        summary="Add a maintenance window (one-off or cron-recurring in a time zone)",
        responses=problem_responses(401, 403, 422),
    )
    async def add_maintenance(body: NewMaintenance, principal: Writer) -> dict[str, Any]:
        async with keel.db.transaction() as session:
            window = await service.add_maintenance(session, **body.model_dump())
            return window_as_dict(window)

    @router.delete(
        "/maintenance/{window_id}",
        status_code=204,
        summary="Remove a maintenance window",
        responses=problem_responses(401, 403, 404),
    )
    async def remove_maintenance(window_id: str, principal: WriterById) -> None:
        async with keel.db.transaction() as session:
            await service.remove_maintenance(session, window_id)

    return router


async def _shown(session: AsyncSession, incident: Incident) -> dict[str, Any]:
    """An incident with its timeline, as the routes answer it."""
    entries = await service.timelines(session, [incident.id])
    return service.as_dict(incident, entries[incident.id])


def window_as_dict(window: Maintenance) -> dict[str, Any]:
    """A maintenance window as the API and `keel deps maintenance --json` show it."""
    return {
        "id": window.id,
        "title": window.title,
        "component": window.component,
        "starts_at": window.starts_at.isoformat() if window.starts_at else None,
        "ends_at": window.ends_at.isoformat() if window.ends_at else None,
        "cron": window.cron,
        "tz": window.tz,
        "minutes": window.minutes,
    }
