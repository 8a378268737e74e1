"""`/api/v1/audit`: search the trail (my tenant's) and verify the chain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from keel.audit.service import EventFilter, event_data, list_events, record, verify
from keel.core.errors import Forbidden, problem_responses
from keel.core.principal import Principal, require

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["audit_router", "audited_read"]

Reader = Annotated[Principal, Depends(require("audit:read"))]
Verifier = Annotated[Principal, Depends(require("audit:verify"))]


class EventPage(BaseModel):
    """One page of events, newest first."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def audit_router(keel: Keel) -> APIRouter:
    """Routes under /api/v1/audit."""
    router = APIRouter(prefix="/api/v1/audit", tags=["audit"])

    @router.get(
        "/events",
        summary="Search audit events (newest first; a tenant's principal sees its tenant only)",
        responses=problem_responses(401, 403, 422),
    )
    async def events(  # noqa: PLR0917 - one parameter per query filter
        actor: Reader,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=36)] = None,
        actor_id: Annotated[str | None, Query(alias="actor", max_length=64)] = None,
        action: Annotated[str | None, Query(max_length=100, description="Prefix.")] = None,
        resource_type: Annotated[str | None, Query(max_length=63)] = None,
        resource_id: Annotated[str | None, Query(max_length=200)] = None,
        tenant: Annotated[str | None, Query(max_length=36)] = None,
        outcome: Annotated[Literal["success", "denied", "failed"] | None, Query()] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        trace_id: Annotated[str | None, Query(max_length=32)] = None,
    ) -> EventPage:
        filters = EventFilter(
            actor=actor_id,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            tenant=tenant,
            outcome=outcome,
            since=since,
            until=until,
            trace_id=trace_id,
        )
        async with keel.db.session() as session:
            rows = await list_events(session, actor, filters, limit=limit, before=cursor)
        items = [event_data(row) for row in rows]
        next_cursor = rows[-1].id if len(rows) == limit else None
        return EventPage(items=items, next_cursor=next_cursor)

    @router.get(
        "/verify",
        summary="Re-hash the whole chain and check its signed checkpoints",
        responses=problem_responses(401, 403),
    )
    async def verify_chain(
        actor: Verifier,
        from_seq: Annotated[int | None, Query(alias="from", ge=1)] = None,
    ) -> dict[str, Any]:
        if actor.tenant_id is not None:
            raise Forbidden(
                "The chain spans every tenant: only deployment-level accounts verify it."
            )
        result = await verify(keel.db, ring=await keel.keyring(), from_seq=from_seq)
        return result.as_dict()

    return router


def audited_read(
    action: str, *, resource: tuple[str, str] | None = None
) -> Callable[[Request], AsyncIterator[None]]:
    """A route dependency recording a sensitive read (a data-access log), e.g.
    `dependencies=[Depends(audited_read("user.read", resource=("user", "user_id")))]`.

    The event is written, in its own short transaction, once the handler has succeeded (a
    refused or failed read records nothing), with the request's actor, address and trace;
    `resource` names the path parameter holding the id.
    """

    async def dependency(request: Request) -> AsyncIterator[None]:
        yield  # the handler runs here; an exception it raises skips the record
        keel = request.app.state.keel
        resource_id = request.path_params.get(resource[1]) if resource else None
        async with keel.db.transaction() as session:
            await record(
                session,
                action,
                resource=(resource[0], resource_id) if resource else None,
            )

    return dependency
