"""The monitor on both dialects: streaks open and close incidents, incidents coexist,
maintenance suppresses them, uptime arithmetic, one probe job per slot, probes of a flaky
upstream, the public status page (nothing internal leaks) and queue-on-outage."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from keel import deps
from keel.core.database import Database
from keel.deps import service
from keel.deps.models import Incident, IncidentUpdate
from keel.deps.monitor import PROBE_KIND, Monitor, check
from keel.deps.status import status_data
from keel.jobs import JobContext, job
from keel.jobs.models import Job, JobAttempt, JobState
from tests.deps.upstream import Behaviour, Upstream
from tests.jobs.test_queue import running

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


async def _probe(db: Database, ok: bool, at: datetime, component: str = "up") -> None:
    async with db.transaction() as session:
        await service.record_probe(
            session, component, ok=ok, latency_ms=5.0, detail="secret-detail", at=at
        )


async def _incidents(db: Database) -> list[Incident]:
    async with db.session() as session:
        return list(await session.scalars(select(Incident).order_by(Incident.opened_at)))


async def test_a_failing_streak_opens_an_incident_and_recovery_closes_it(
    migrated_db: Database,
) -> None:
    db = migrated_db
    for n, ok in enumerate([False, False]):
        await _probe(db, ok, T0 + timedelta(minutes=n))
    assert await _incidents(db) == [], "two failures are below the threshold of three"
    await _probe(db, False, T0 + timedelta(minutes=2))
    await _probe(db, False, T0 + timedelta(minutes=3))
    (incident,) = await _incidents(db)
    assert incident.state == "open" and incident.automatic
    await _probe(db, True, T0 + timedelta(minutes=4))
    assert (await _incidents(db))[0].state == "open", "one success is not a recovery"
    await _probe(db, True, T0 + timedelta(minutes=5))
    (incident,) = await _incidents(db)
    assert incident.state == "resolved" and incident.resolved_at == T0 + timedelta(minutes=5)
    async with db.session() as session:
        kinds = list(
            await session.scalars(
                select(IncidentUpdate.kind)
                .where(IncidentUpdate.incident_id == incident.id)
                .order_by(IncidentUpdate.id)
            )
        )
    assert kinds == ["opened", "resolved"]


async def test_incidents_coexist(migrated_db: Database) -> None:
    db = migrated_db
    async with db.transaction() as session:
        manual = await service.open_incident(session, title="Slow uploads", impact="minor")
    for n in range(3):
        await _probe(db, False, T0 + timedelta(minutes=n), component="a")
        await _probe(db, False, T0 + timedelta(minutes=n), component="b")
    found = await _incidents(db)
    assert len(found) == 3 and {i.state for i in found} == {"open"}
    assert manual.id in {i.id for i in found}
    async with db.transaction() as session:
        await service.add_update(session, manual.id, "Found it", impact="major")
        await service.set_postmortem(session, manual.id, "A full disk.")
        await service.resolve_incident(session, manual.id, "Fixed")
    states = {i.id: i.state for i in await _incidents(db)}
    assert states[manual.id] == "resolved" and list(states.values()).count("open") == 2


async def test_bad_incident_input_changes_nothing(migrated_db: Database) -> None:
    from keel.core.errors import NotFound, ValidationFailed

    async with migrated_db.transaction() as session:
        with pytest.raises(ValidationFailed):
            await service.open_incident(session, title="x", impact="apocalyptic")
        with pytest.raises(ValidationFailed):
            await service.open_incident(session, title="  ")
        with pytest.raises(NotFound):
            await service.add_update(session, "nope", "hello")
        with pytest.raises(ValidationFailed):
            await service.add_maintenance(session, title="w", cron="not cron", minutes=5)
        with pytest.raises(ValidationFailed):
            await service.add_maintenance(
                session, title="w", starts_at=T0, ends_at=T0 - timedelta(hours=1)
            )
        with pytest.raises(ValidationFailed):
            await service.add_maintenance(
                session, title="w", cron="0 3 * * *", minutes=5, tz="Mars/Base"
            )
    assert await _incidents(migrated_db) == []


async def test_maintenance_suppresses_incidents_and_is_left_out_of_uptime(
    migrated_db: Database,
) -> None:
    db = migrated_db
    async with db.transaction() as session:
        await service.add_maintenance(
            session, title="Upgrade", component="up", starts_at=T0, ends_at=T0 + timedelta(hours=1)
        )
        # Every day at 03:00 Seoul time (18:00 UTC the day before), for 30 minutes.
        await service.add_maintenance(
            session, title="Nightly", cron="0 3 * * *", tz="Asia/Seoul", minutes=30
        )
    for n in range(5):
        await _probe(db, False, T0 + timedelta(minutes=n))
    nightly = datetime(2026, 11, 1, 18, 10, tzinfo=UTC)
    for n in range(5):
        await _probe(db, False, nightly + timedelta(minutes=n))
    assert await _incidents(db) == []
    async with db.session() as session:
        total, _ = await service.uptime(session, "up", since=T0 - timedelta(days=1))
        assert total.total == 0 and total.percent is None, "maintenance is not downtime"
        assert await service.in_maintenance(session, "up", nightly) is not None
        assert await service.in_maintenance(session, "up", nightly + timedelta(minutes=31)) is None


async def test_uptime_arithmetic(migrated_db: Database) -> None:
    db = migrated_db
    # Day 1: 3 good of 4; day 2: nothing; day 3: 2 good of 2.
    for n, ok in enumerate([True, True, False, True]):
        await _probe(db, ok, T0 + timedelta(minutes=n))
    for n in range(2):
        await _probe(db, True, T0 + timedelta(days=2, minutes=n))
    async with db.session() as session:
        total, bars = await service.uptime(session, "up", since=T0 - timedelta(hours=1))
        hourly, _ = await service.uptime(session, "up", since=T0 + timedelta(days=2), period="hour")
    assert (total.good, total.total, total.percent) == (5, 6, 83.333)
    assert [b.percent for _, b in bars] == [75.0, 100.0], "a day without probes has no bar"
    assert (hourly.good, hourly.total) == (2, 2)
    assert service.budget_left(total, 90.0) == 0.0
    assert service.budget_left(service.Uptime(999, 1000), 99.9) == 0.0
    assert service.budget_left(service.Uptime(1000, 1000), 99.9) == 1.0
    assert service.budget_left(service.Uptime(0, 0), 99.9) is None


async def test_one_probe_job_per_slot_with_two_monitors(migrated_db: Database) -> None:
    deps.declare("up", base_url="http://127.0.0.1:9", probe=deps.Probe("/health"), probe_every=10)
    first, second = Monitor(migrated_db), Monitor(migrated_db)
    now = 1_800_000_005.0
    made = await asyncio.gather(first.enqueue_due(now), second.enqueue_due(now + 1))
    async with migrated_db.session() as session:
        probes = list(await session.scalars(select(Job.args).where(Job.kind == PROBE_KIND)))
    names = sorted(args["name"] for args in probes)
    assert names == ["keel.database", "keel.workers", "up"], names
    assert sum(made) == 3
    assert await first.enqueue_due(now + 11) == 1, "the next slot of `up` (every 10 s)"


async def test_probe_checks_status_json_and_latency(upstream: Upstream) -> None:
    dep = deps.declare(
        "up",
        base_url=upstream.url,
        probe=deps.Probe("/health", json_field=("status", "ok"), max_ms=200),
    )
    assert (await check(dep))[0] is True
    upstream.then(Behaviour(json={"status": "degraded"}))
    ok, _, detail = await check(dep)
    assert not ok and "status is 'degraded'" in detail
    upstream.then(Behaviour(delay=0.3))
    ok, _, detail = await check(dep)
    assert not ok and "more than 200" in detail
    upstream.then(Behaviour(status=503))
    assert (await check(dep))[0] is False
    await upstream.stop()
    ok, _, detail = await check(dep)
    assert not ok and detail


async def test_the_status_page_shows_states_and_leaks_nothing_internal(
    migrated_db: Database, upstream: Upstream
) -> None:
    deps.declare(
        "up",
        base_url=upstream.url,
        probe=deps.Probe("/internal-health-path"),
        public=deps.Public("Image generation", target=99.5),
    )
    deps.declare("hidden", base_url="http://10.1.2.3:8080", probe=deps.Probe("/h"))
    now = datetime.now(UTC)
    for n in range(3):
        await _probe(migrated_db, False, now - timedelta(seconds=3 - n))
    data = await status_data(migrated_db, now=now)
    shown = {c["name"]: c for c in data["components"]}
    assert set(shown) == {"API", "Database", "Background jobs", "Image generation"}
    assert shown["Image generation"]["state"] == "outage"
    assert shown["Image generation"]["uptime"]["24h"] == 0.0
    assert shown["Image generation"]["sla"]["target"] == 99.5
    assert shown["Database"]["state"] == "no_data"
    assert len(shown["Image generation"]["bars"]) == 90
    assert data["status"] == "outage" and len(data["incidents"]) == 1
    text = str(data)
    for secret in (
        upstream.url,
        "127.0.0.1",
        "internal-health-path",
        "secret-detail",
        "10.1.2.3",
        "hidden",
    ):
        assert secret not in text, secret


async def test_the_status_routes_are_public(client: httpx.AsyncClient) -> None:
    page = await client.get("/status")
    assert page.status_code == 200 and "Service status" in page.text
    assert "<h1>" in page.text and 'aria-label="Daily uptime of Database' in page.text
    data = (await client.get("/status.json")).json()
    assert {c["name"] for c in data["components"]} >= {"Database", "Background jobs"}
    assert (await client.get("/api/v1/dependencies")).status_code == 401


# --- queue on outage ---------------------------------------------------------------------------
CALLS: list[int] = []


@job("test.deps.fetch", max_attempts=20, backoff_base=0.05, backoff_cap=0.1)
async def fetch_later(ctx: JobContext, n: int) -> int:
    response = await deps.http("flaky").get("/thing")
    CALLS.append(response.status_code)
    return response.status_code


async def test_a_request_queued_during_an_outage_runs_after_recovery(
    migrated_db: Database, upstream: Upstream
) -> None:
    db = migrated_db
    deps.declare(
        "flaky",
        base_url=upstream.url,
        retry=deps.Retry(attempts=1),
        breaker=deps.Breaker(failures=1, open_for=0.5),
    )
    upstream.default = Behaviour(status=503)
    assert (await deps.http("flaky").get("/thing")).status_code == 503  # opens the breaker
    with pytest.raises(deps.DependencyUnavailable):
        await deps.http("flaky").get("/thing")
    async with db.transaction() as session:
        queued = await deps.queue_on_outage(session, "flaky", "test.deps.fetch", {"n": 1})
    answer = deps.accepted(queued)
    assert answer.status_code == 202 and answer.headers["location"].endswith(queued.id)
    CALLS.clear()
    async with running(db, concurrency=2):
        await asyncio.sleep(0.2)
        upstream.default = Behaviour()  # the upstream recovers
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            async with db.session() as session:
                state = await session.scalar(select(Job.state).where(Job.id == queued.id))
            if state == JobState.COMPLETED:
                break
            assert asyncio.get_running_loop().time() < deadline, state
            await asyncio.sleep(0.05)
    assert CALLS[-1] == 200
    async with db.session() as session:
        classes = list(
            await session.scalars(
                select(JobAttempt.failure_class).where(JobAttempt.job_id == queued.id)
            )
        )
        count = await session.scalar(select(func.count()).where(Job.id == queued.id))
    assert "dependency_unavailable" in classes and count == 1


async def test_hidden_components_incidents_stay_off_the_status_page(
    migrated_db: Database, upstream: Upstream
) -> None:
    """Three failed probes of a dependency hidden by configuration (`public = false`) and of
    `keel.workers` hidden likewise open incidents operators see, but the page shows neither
    incident nor name, open or resolved, and the overall state stays operational."""
    from keel.core.config import DependencySettings
    from keel.deps import spec
    from keel.deps.monitor import probe_now

    deps.declare(
        "up-stream",
        base_url=upstream.url,
        probe=deps.Probe("/health", failures=3, recoveries=1),
        public=deps.Public("Uploads"),
    )
    deps.declare("internal-cache", base_url=upstream.url, probe=deps.Probe("/c", failures=3))
    spec.use_settings(
        {
            "up_stream": DependencySettings(public=False),
            "keel_workers": DependencySettings(public=False),
        }
    )
    upstream.default = Behaviour(status=503)
    for _ in range(3):
        await probe_now(migrated_db, "up-stream")
        await probe_now(migrated_db, "internal-cache")
    now = datetime.now(UTC)
    for n in range(3):
        await _probe(migrated_db, False, now - timedelta(seconds=3 - n), "keel.workers")
    upstream.default = Behaviour()
    await probe_now(migrated_db, "up-stream")  # resolves its incident: history, not live
    incidents = await _incidents(migrated_db)
    assert {(i.component, i.state) for i in incidents} == {
        ("up-stream", "resolved"),
        ("internal-cache", "open"),
        ("keel.workers", "open"),
    }
    data = await status_data(migrated_db, now=datetime.now(UTC))
    assert data["incidents"] == [] and data["history"] == []
    assert data["status"] == "operational"
    assert {c["name"] for c in data["components"]} == {"API", "Database"}
    text = str(data)
    for secret in ("up-stream", "Uploads", "internal-cache", "Background jobs", "keel."):
        assert secret not in text, secret
    async with migrated_db.transaction() as session:  # one for no component: public
        await service.open_incident(session, title="Slow pages", impact="minor")
    data = await status_data(migrated_db, now=datetime.now(UTC))
    assert [i["title"] for i in data["incidents"]] == ["Slow pages"]
    assert data["status"] == "degraded"


async def test_automatic_incidents_carry_the_components_public_name(
    migrated_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing `keel.database` probe named "Primary store" by configuration opens an
    incident titled by that name, and the page titles it by the name in force when shown."""
    from sqlalchemy import text

    from keel.core.config import DependencySettings
    from keel.deps import monitor, spec

    spec.use_settings({"keel_database": DependencySettings(public_name="Primary store")})
    monkeypatch.setattr(monitor, "text", lambda _sql: text("SELECT no_such_function()"))
    for _ in range(2):
        assert (await monitor.probe_now(migrated_db, "keel.database"))["ok"] is False
    (incident,) = await _incidents(migrated_db)
    assert incident.title == "Primary store is unavailable"
    spec.use_settings({"keel_database": DependencySettings(public_name="Storage")})
    data = await status_data(migrated_db, now=datetime.now(UTC))
    assert [(i["title"], i["component"]) for i in data["incidents"]] == [
        ("Storage is unavailable", "Storage")
    ]
