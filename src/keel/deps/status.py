"""The public status page: `/status` (HTML) and `/status.json`. Only display names, states,
uptime, incidents and maintenance appear — never URLs, hosts, errors or latencies."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import or_, select

from keel.core.database import Database
from keel.core.guards import public
from keel.deps.models import ComponentState, Incident, Maintenance
from keel.deps.monitor import API, API_EVERY, API_NAME, OWN_COMPONENTS, OWN_EVERY
from keel.deps.service import (
    as_dict,
    open_incidents,
    sla,
    timelines,
    uptime,
    window_active,
    window_start,
)
from keel.deps.spec import Public, declared, public_of, settings_for

__all__ = ["CACHE_SECONDS", "status_data", "status_router"]

CACHE_SECONDS = 10.0
"""The page is computed at most this often per process, whatever the traffic."""
WINDOWS = {"24h": (24, "hour"), "7d": (7, "day"), "30d": (30, "day"), "90d": (90, "day")}
"""Each uptime figure: that many whole hours or UTC days, the current one included."""
HISTORY = timedelta(days=14)

_templates = Environment(
    loader=FileSystemLoader(
        [Path(__file__).with_name("templates"), Path(__file__).parent.parent / "core" / "templates"]
    ),
    autoescape=select_autoescape(default=True),
)


def _components() -> list[dict[str, Any]]:
    """Every component shown: key, display name, SLA target and window, probe interval."""
    own = {API: (API_NAME, API_EVERY)} | {
        key: (name, OWN_EVERY) for key, name in OWN_COMPONENTS.items()
    }
    found: list[tuple[str, Public, float]] = []
    for key, (name, every) in own.items():
        shown = public_of(Public(name), settings_for(key), name)
        if shown is not None:
            found.append((key, shown, every))
    for name, dep in sorted(declared().items()):
        if dep.public is not None and dep.probe is not None:
            found.append((name, dep.public, dep.probe_every))
    return [
        {
            "key": key,
            "name": shown.name,
            "target": shown.target,
            "window_days": shown.window_days,
            "every": every,
        }
        for key, shown, every in found
    ]


async def status_data(db: Database, *, now: datetime | None = None) -> dict[str, Any]:
    """Everything the page shows, as JSON data."""
    now = now or datetime.now(UTC)
    components = _components()
    async with db.session() as session:
        # unscoped: the status page is deployment-wide.
        states = {
            s.component: s
            for s in await session.scalars(
                select(ComponentState).where(
                    ComponentState.component.in_([c["key"] for c in components])
                )
            )
        }
        keys = {c["key"] for c in components}

        def public(component: str | None) -> bool:
            """Whether what concerns `component` shows: a shown one's, or all components'."""
            return component is None or component in keys

        windows = [w for w in await session.scalars(select(Maintenance)) if public(w.component)]
        live = [i for i in await open_incidents(session) if public(i.component)]
        recent = list(
            await session.scalars(
                select(Incident)
                .where(
                    Incident.state == "resolved",
                    Incident.resolved_at >= now - HISTORY,
                    # A hidden component's incidents are for operators only.
                    or_(Incident.component.is_(None), Incident.component.in_(keys)),
                )
                .order_by(Incident.opened_at.desc())
                .limit(20)
            )
        )
        entries = await timelines(session, [i.id for i in live + recent])
        shown = []
        for component in components:
            key = component["key"]
            state = states.get(key)
            maintenance = next(
                (w for w in windows if w.component in (None, key) and window_active(w, now)),
                None,
            )
            stale = (
                state is None
                or state.last_at is None
                or (now - state.last_at > timedelta(seconds=3 * component["every"]))
            )
            if maintenance is not None:
                current = "maintenance"
            elif state is None or state.last_ok is None:
                current = "no_data"
            elif key == "keel.workers" and stale:
                current = "outage"  # no worker ran its probe lately
            elif stale:
                current = "no_data"
            elif any(i.component == key for i in live):
                current = "outage"
            else:
                current = "operational" if state.last_ok else "degraded"
            uptimes: dict[str, Any] = {}
            per_window: dict[str, Any] = {}
            for label, (count, period) in WINDOWS.items():
                total, per_window[label] = await uptime(
                    session, key, since=window_start(now, count, period), period=period
                )
                uptimes[label] = total.percent
            # One bar per day of the last 90; a day without probes has no figure.
            days = {start.date(): bar for start, bar in per_window["90d"]}
            day_bars = []
            for back in range(89, -1, -1):
                day = (now - timedelta(days=back)).date()
                found = days.get(day)
                day_bars.append(
                    {"day": day.isoformat(), "percent": found.percent if found else None}
                )
            sla_total, _ = await uptime(
                session, key, since=window_start(now, component["window_days"])
            )
            shown.append(
                {
                    "name": component["name"],
                    "state": current,
                    "uptime": uptimes,
                    "bars": day_bars,
                    "sla": sla(sla_total, component["target"], component["window_days"]),
                }
            )
    names = {c["key"]: c["name"] for c in components}

    def public_incident(incident: Incident) -> dict[str, Any]:
        data = as_dict(incident, entries.get(incident.id, []))
        data["component"] = names.get(incident.component or "")
        if incident.automatic and data["component"]:
            # Titled by the monitor when it opened: the current public name, whatever it was.
            data["title"] = f"{data['component']} is unavailable"
        return data

    states_seen = {c["state"] for c in shown}
    overall = (
        "outage"
        if "outage" in states_seen or any(i.impact in ("major", "critical") for i in live)
        else "degraded"
        if states_seen & {"degraded"} or live
        else "operational"
    )
    return {
        "status": overall,
        "updated_at": now.isoformat(),
        "components": shown,
        "incidents": [public_incident(i) for i in live],
        "history": [public_incident(i) for i in recent],
        "maintenance": [
            {
                "title": w.title,
                "component": names.get(w.component or ""),
                "active": window_active(w, now),
                "starts_at": w.starts_at.isoformat() if w.starts_at else None,
                "ends_at": w.ends_at.isoformat() if w.ends_at else None,
                "recurring": w.cron,
                "tz": w.tz if w.cron else None,
                "minutes": w.minutes,
            }
            for w in windows
            if w.cron or (w.ends_at is not None and w.ends_at > now)
        ],
    }


_LABELS = {
    "operational": "Operational",
    "degraded": "Degraded",
    "outage": "Outage",
    "maintenance": "Under maintenance",
    "no_data": "No data yet",
}


def status_router(db_of: Any) -> APIRouter:
    """`/status` and `/status.json` (public, computed at most every CACHE_SECONDS)."""
    router = APIRouter(include_in_schema=False)
    cache: dict[str, Any] = {"at": 0.0, "data": None}
    page = _templates.get_template("status.html")

    async def current() -> dict[str, Any]:
        if cache["data"] is None or time.monotonic() - cache["at"] > CACHE_SECONDS:
            cache["data"] = await status_data(db_of())
            cache["at"] = time.monotonic()
        return cache["data"]  # type: ignore[no-any-return]

    headers = {"Cache-Control": f"public, max-age={int(CACHE_SECONDS)}"}

    @router.get("/status.json", dependencies=[Depends(public)])
    async def status_json() -> JSONResponse:
        return JSONResponse(await current(), headers=headers)

    @router.get("/status", response_class=HTMLResponse, dependencies=[Depends(public)])
    async def status_page() -> HTMLResponse:
        return HTMLResponse(page.render(data=await current(), labels=_LABELS), headers=headers)

    return router
