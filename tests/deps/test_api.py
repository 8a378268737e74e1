"""The operators' routes on both dialects: malformed bodies, unknown ids, bad cron, time zones
and times are refused with problem+json and change nothing; anonymous, viewer, tenant and
operator callers get exactly what their permissions allow; the status page shows Keel's own
components and configured dependencies without any internal detail."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from keel import deps
from keel.audit.models import AuditEvent
from keel.core.config import Config
from keel.deps import service, spec
from keel.deps.models import Incident, IncidentUpdate, Maintenance
from keel.deps.monitor import API, finish_api_slot, report_api_slot
from keel.identity.runtime import identity_runtime
from keel.identity.service import create_user, set_roles
from tests.conftest import hashed
from tests.identity.support import PASSWORD, Org, build_org
from tests.identity.test_apikeys import signed_in

STAFF = {"ops-viewer@example.com": ["viewer"], "ops-operator@example.com": ["operator"]}
"""Deployment-level accounts besides the owner (who holds every permission)."""


@pytest.fixture
async def org(make_config: Callable[..., Config]) -> AsyncIterator[Org]:
    """The organisation plus a deployment-level viewer and operator."""
    async for value in build_org(make_config(rate_limit_login="10000/minute")):
        catalog = identity_runtime(value.keel).catalog
        async with value.keel.db.transaction() as session:
            for email, roles in STAFF.items():
                user = await create_user(
                    session, email=email, password_hash=await hashed(PASSWORD), tenant_id=None
                )
                await set_roles(session, catalog, None, user, roles, config=value.keel.config)
                value.users[email] = user.id
        yield value


async def _counts(org: Org) -> tuple[int, ...]:
    async with org.keel.db.session() as session:
        # unscoped: the test counts everything.
        found = []
        for model in (Incident, IncidentUpdate, Maintenance, AuditEvent):
            found.append(int(await session.scalar(select(func.count()).select_from(model)) or 0))
        return tuple(found)


def _problem(response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")


async def _seed(org: Org) -> tuple[str, str]:
    """An open incident and a maintenance window to aim at."""
    async with org.keel.db.transaction() as session:
        incident = await service.open_incident(session, title="Slow uploads", impact="minor")
        window = await service.add_maintenance(
            session,
            title="Upgrade",
            starts_at=datetime(2030, 1, 1, tzinfo=UTC),
            ends_at=datetime(2030, 1, 2, tzinfo=UTC),
        )
    return incident.id, window.id


async def test_bad_input_is_refused_and_changes_nothing(org: Org) -> None:
    """Malformed and invalid bodies, unknown ids, bad cron expressions, time zones and times
    all answer 4xx problem+json, and no incident, update, window or audit event appears."""
    incident_id, _ = await _seed(org)
    before = await _counts(org)
    http = await signed_in(org, "owner@example.com")
    async with http:
        raw = {"content": b"{not json", "headers": {"content-type": "application/json"}}
        _problem(await http.post("/api/v1/incidents", **raw), 400, 422)  # type: ignore[arg-type]
        for body in (
            {},
            {"title": ""},
            {"title": "x" * 201},
            {"title": "Down", "impact": "apocalyptic"},
            {"title": ["Down"]},
            {"title": "Down", "message": "x" * 5001},
            [{"title": "Down"}],
        ):
            _problem(await http.post("/api/v1/incidents", json=body), 422)
        _problem(await http.get("/api/v1/incidents", params={"state": "bogus"}), 422)
        note = {"message": "Found it"}
        _problem(await http.post("/api/v1/incidents/nope/updates", json=note), 404)
        _problem(await http.post("/api/v1/incidents/nope/resolve", json=note), 404)
        _problem(await http.put("/api/v1/incidents/nope/postmortem", json={"text": "x"}), 404)
        url = f"/api/v1/incidents/{incident_id}"
        _problem(await http.post(f"{url}/updates", json={"message": ""}), 422)
        _problem(await http.post(f"{url}/updates", json={"message": "x", "impact": "big"}), 422)
        _problem(await http.post(f"{url}/updates", **raw), 400, 422)  # type: ignore[arg-type]
        _problem(await http.put(f"{url}/postmortem", json={"text": ""}), 422)
        _problem(await http.put(f"{url}/postmortem", json={}), 422)
        start, end = "2030-02-01T00:00:00+00:00", "2030-02-02T00:00:00+00:00"
        for body in (
            {"title": "W", "cron": "not a cron", "minutes": 30},
            {"title": "W", "cron": "61 * * * *", "minutes": 30},
            {"title": "W", "cron": "0 3 * * *", "minutes": 30, "tz": "Mars/Olympus"},
            {"title": "W", "cron": "0 3 * * *", "minutes": 30, "tz": "../../etc/passwd"},
            {"title": "W", "cron": "0 3 * * *"},
            {"title": "W", "cron": "0 3 * * *", "minutes": 0},
            {"title": "W", "cron": "0 3 * * *", "minutes": 10081},
            {"title": "W", "starts_at": "2030-02-01T00:00:00", "ends_at": "2030-02-02T00:00:00"},
            {"title": "W", "starts_at": end, "ends_at": start},
            {"title": "W", "starts_at": start, "ends_at": start},
            {"title": "W", "starts_at": start},
            {"title": "W", "starts_at": "tomorrow", "ends_at": end},
            {"title": "W"},
            {"title": "  ", "starts_at": start, "ends_at": end},
            {"starts_at": start, "ends_at": end},
        ):
            _problem(await http.post("/api/v1/maintenance", json=body), 422)
        _problem(await http.post("/api/v1/maintenance", **raw), 400, 422)  # type: ignore[arg-type]
        _problem(await http.delete("/api/v1/maintenance/nope"), 404)
        resolved = await http.post(f"{url}/resolve", json={"message": "Fixed"})
        assert resolved.status_code == 200
        after_resolve = await _counts(org)
        _problem(await http.post(f"{url}/resolve", json={"message": "Again"}), 422)
        assert await _counts(org) == after_resolve, "a second resolve changes nothing"
    assert after_resolve[0] == before[0] and after_resolve[2] == before[2]
    assert after_resolve[1] == before[1] + 1, "only the successful resolve wrote a timeline entry"


@pytest.mark.parametrize(
    ("who", "reads", "writes", "by_id"),
    [
        (None, 401, 401, 401),
        ("ops-viewer@example.com", 403, 403, 403),
        ("ops-operator@example.com", 200, 403, 403),
        ("admin-a@example.com", 403, 403, 404),
        ("viewer-a@example.com", 403, 403, 403),  # lacks the permission: 403 before the id
        ("owner@example.com", 200, None, None),
    ],
)
async def test_each_caller_gets_what_its_permissions_allow(
    org: Org, who: str | None, reads: int, writes: int | None, by_id: int | None
) -> None:
    """Anonymous callers get 401, deployment viewers 403, operators read but cannot write,
    tenants' accounts 403 (404 on routes naming an id); a refused request changes nothing."""
    incident_id, window_id = await _seed(org)
    before = await _counts(org)
    http = await signed_in(org, who) if who else org.client()
    async with http:
        for path in ("/api/v1/dependencies", "/api/v1/incidents", "/api/v1/maintenance"):
            response = await http.get(path)
            assert response.status_code == reads, (path, response.text)
        if writes is None:
            return
        attempts = [
            (writes, http.post("/api/v1/incidents", json={"title": "Forged"})),
            (
                writes,
                http.post(
                    "/api/v1/maintenance",
                    json={"title": "Forged", "cron": "* * * * *", "minutes": 60},
                ),
            ),
            (
                by_id,
                http.post(f"/api/v1/incidents/{incident_id}/updates", json={"message": "Hi"}),
            ),
            (by_id, http.post(f"/api/v1/incidents/{incident_id}/resolve", json={"message": "X"})),
            (by_id, http.put(f"/api/v1/incidents/{incident_id}/postmortem", json={"text": "X"})),
            (by_id, http.delete(f"/api/v1/maintenance/{window_id}")),
        ]
        for status, request in attempts:
            _problem(await request, status)  # type: ignore[arg-type]
    after = await _counts(org)
    assert after[:3] == before[:3], "a refused request wrote nothing"
    async with org.keel.db.session() as session:
        incident = await session.get(Incident, incident_id)
        assert incident is not None and incident.state == "open" and incident.impact == "minor"
        assert await session.get(Maintenance, window_id) is not None


async def test_the_status_page_shows_own_and_configured_components_without_internals(
    org: Org,
) -> None:
    """Keel's API, database and workers and a dependency declared by configuration appear
    by display name with an SLA; their probe details, URLs and hosts never do."""
    spec.use_settings(
        {
            "keel_api": spec.DependencySettings(sla_target=99.5, sla_window_days=7),
            "billing": spec.DependencySettings(
                base_url="https://billing.internal.example:8443",
                probe={"path": "/secret-health"},  # type: ignore[arg-type]
                public_name="Billing",
            ),
        }
    )
    assert deps.dependency("billing").public is not None
    org.keel.state["deps.stop"].set()  # the kernel's own monitor would race for the slot
    await org.keel.state["deps.monitor"]
    now = datetime.now(UTC)
    slot = now.replace(second=0, microsecond=0) - timedelta(minutes=10)
    db = org.keel.db
    await report_api_slot(db, slot, ready=False, requests=40, errors=30)
    assert await finish_api_slot(db, slot) is False
    async with db.transaction() as session:
        await service.record_probe(
            session,
            "keel.database",
            ok=False,
            latency_ms=3.0,
            detail="OperationalError: connection to db-primary.internal (10.9.8.7) refused",
            at=now - timedelta(seconds=5),
        )
        for n in range(3):  # enough failures in a row to open the automatic incident
            await service.record_probe(
                session,
                "billing",
                ok=False,
                latency_ms=912.0,
                detail="ConnectError: billing.internal.example:8443 /secret-health",
                at=now - timedelta(seconds=7 - n),
            )
    async with org.client() as http:
        page = await http.get("/status")
        data = (await http.get("/status.json")).json()
    assert page.status_code == 200
    shown = {c["name"]: c for c in data["components"]}
    assert {"API", "Database", "Background jobs", "Billing"} <= set(shown)
    assert shown["API"]["sla"]["target"] == 99.5 and shown["API"]["sla"]["window_days"] == 7
    assert shown["API"]["sla"]["achieved"] == 0.0 and shown["API"]["sla"]["met"] is False
    assert shown["Database"]["state"] == "degraded"
    assert shown["Billing"]["state"] == "outage"
    assert [(i["title"], i["component"]) for i in data["incidents"]] == [
        ("Billing is unavailable", "Billing")
    ]
    assert "SLA: target 99.5 % over 7 days" in page.text
    for text in (page.text, str(data)):
        for secret in (
            "billing.internal",
            "8443",
            "secret-health",
            "db-primary",
            "10.9.8.7",
            "OperationalError",
            "ConnectError",
            "912",
            "not ready",
            "requests answered 5xx",
            "billing is",
            API,
        ):
            assert secret not in text, secret
