"""Keel's own API component (aggregated per slot across processes, recorded exactly once)
and the SLA arithmetic shown on the status page, on both dialects."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from keel import deps
from keel.core.config import DependencySettings
from keel.core.database import Database
from keel.deps import service, spec
from keel.deps.models import ApiSlot, ComponentState, ProbeResult, ProbeRollup
from keel.deps.monitor import (
    API,
    API_EVERY,
    API_GRACE,
    NOT_COUNTED,
    ApiReporter,
    Monitor,
    api_healthy,
    finish_api_slot,
    report_api_slot,
)
from keel.deps.status import status_data
from keel.jobs.cron import claim_slot

SLOT = 60_000_000  # an API slot index: 60_000_000 * 30 s after the epoch (in 2027)
START = datetime.fromtimestamp(SLOT * API_EVERY, UTC)


@dataclass
class FakeProcess:
    """A serving process's view: requests answered, 5xx among them, readiness."""

    requests: int = 0
    errors: int = 0
    is_ready: bool = True

    def reporter(self) -> ApiReporter:
        async def ready() -> bool:
            return self.is_ready

        return ApiReporter(lambda: (self.requests, self.errors), ready)


async def _api_results(db: Database) -> list[ProbeResult]:
    async with db.session() as session:
        return list(
            await session.scalars(
                select(ProbeResult).where(ProbeResult.component == API).order_by(ProbeResult.at)
            )
        )


def test_the_api_rule_at_its_edges() -> None:
    """The API is healthy when ready and at most 5 % of at least 20 requests were 5xx; fewer
    requests are judged by readiness alone, and one process not ready fails the slot."""
    assert api_healthy(not_ready=0, requests=19, errors=19), "too few requests to judge"
    assert api_healthy(not_ready=0, requests=20, errors=1), "exactly 5 %"
    assert not api_healthy(not_ready=0, requests=20, errors=2)
    assert api_healthy(not_ready=0, requests=100, errors=5)
    assert not api_healthy(not_ready=0, requests=100, errors=6)
    assert not api_healthy(not_ready=0, requests=40, errors=3), "7.5 %"
    assert not api_healthy(not_ready=1, requests=1000, errors=0)
    assert api_healthy(not_ready=0, requests=0, errors=0)


async def test_three_processes_record_one_result_per_slot_from_their_summed_counts(
    migrated_db: Database,
) -> None:
    """Three monitors report one slot each; racing to finish it, exactly one records a
    single result, judged on the sum of their requests (each alone is below 20 and would
    pass; together 10 % are 5xx)."""
    db = migrated_db
    processes = [FakeProcess(), FakeProcess(), FakeProcess()]
    monitors = [Monitor(db, api=p.reporter()) for p in processes]
    t0 = SLOT * API_EVERY + 1
    for monitor in monitors:
        await monitor.api_due(t0)  # starts counting this slot
    for process, (requests, errors) in zip(processes, [(8, 0), (6, 1), (6, 1)], strict=True):
        process.requests, process.errors = requests, errors
    await asyncio.gather(*(m.api_due(t0 + API_EVERY) for m in monitors))  # the slot ended
    async with db.session() as session:
        row = await session.get(ApiSlot, START)
        assert row is not None
        assert (row.reports, row.requests, row.errors, row.not_ready) == (3, 20, 2, 0)
    assert await _api_results(db) == [], "nothing is recorded before the grace has passed"
    finished = await asyncio.gather(*(m.api_due(t0 + API_EVERY + API_GRACE) for m in monitors))
    assert sorted(finished, key=str) == [False, None, None], finished
    (result,) = await _api_results(db)
    assert result.at == START and result.ok is False
    assert result.detail is not None and "2 of 20" in result.detail
    async with db.session() as session:
        rollups = list(
            await session.scalars(select(ProbeRollup).where(ProbeRollup.component == API))
        )
    assert {(r.period, r.good, r.total) for r in rollups} == {
        ("minute", 0, 1),
        ("hour", 0, 1),
        ("day", 0, 1),
    }
    again = [await finish_api_slot(db, START) for _ in range(2)]
    assert again == [None, None] and len(await _api_results(db)) == 1


async def test_a_probe_claim_named_like_the_api_does_not_take_its_slot(
    migrated_db: Database,
) -> None:
    """The API's slot claim has its own prefix: a probe slot claim named `keel.api` (as a
    user dependency of that name once made) does not stop the API's result being recorded."""
    db = migrated_db
    await report_api_slot(db, START, ready=True, requests=5, errors=0)
    async with db.transaction() as session:
        assert await claim_slot(session, f"deps.probe:{API}", START)
    assert await finish_api_slot(db, START) is True
    assert [r.ok for r in await _api_results(db)] == [True]


def _failing_once(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Make `monitor.<name>` raise on its first call (the database went away), then work."""
    from keel.deps import monitor

    real, calls = getattr(monitor, name), []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("connection lost")
        return await real(*args, **kwargs)

    monkeypatch.setattr(monitor, name, flaky)
    return calls


async def test_a_failed_finish_is_tried_again_and_a_late_tick_catches_up(
    migrated_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot whose finishing transaction failed is recorded on the next tick, and a tick
    coming two slots late records both slots it missed."""
    db = migrated_db
    for n in range(4):
        await report_api_slot(
            db, START + timedelta(seconds=API_EVERY * n), ready=True, requests=1, errors=0
        )
    calls = _failing_once(monkeypatch, "finish_api_slot")
    monitor = Monitor(db)
    after = (SLOT + 1) * API_EVERY + API_GRACE + 0.5  # slot SLOT's grace has passed
    with pytest.raises(OSError, match="connection lost"):
        await monitor.api_due(after)
    assert await monitor.api_due(after + 1) is True, "tried again"
    assert len(calls) == 2 and len(await _api_results(db)) == 1
    assert await monitor.api_due(after + 3 * API_EVERY) is True  # slots +1, +2 and +3
    assert [r.at for r in await _api_results(db)] == [
        START + timedelta(seconds=API_EVERY * n) for n in range(4)
    ]


async def test_a_failed_report_keeps_its_counts_for_the_next_tick(
    migrated_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When writing a process's slot report fails, the next tick reports the same slot with
    every request counted since the slot began, none lost."""
    db = migrated_db
    process = FakeProcess()
    monitor = Monitor(db, api=process.reporter())
    await monitor.api_due(SLOT * API_EVERY + 1)
    process.requests, process.errors = 30, 3
    _failing_once(monkeypatch, "report_api_slot")
    with pytest.raises(OSError, match="connection lost"):
        await monitor.api_due((SLOT + 1) * API_EVERY + 1)
    process.requests = 31
    await monitor.api_due((SLOT + 1) * API_EVERY + 2)
    async with db.session() as session:
        row = await session.get(ApiSlot, START)
    assert row is not None and (row.reports, row.requests, row.errors) == (1, 31, 3)


async def test_concurrent_finishers_record_the_slot_once(migrated_db: Database) -> None:
    """Eight finishers of one slot on separate connections race; the slot table lets one
    record it."""
    db = migrated_db
    await report_api_slot(db, START, ready=True, requests=50, errors=1)
    outcomes = await asyncio.gather(*(finish_api_slot(db, START) for _ in range(8)))
    assert outcomes.count(True) == 1 and outcomes.count(None) == 7
    assert [r.ok for r in await _api_results(db)] == [True]


async def test_a_process_not_ready_fails_the_slot_and_an_unreported_slot_has_no_data(
    migrated_db: Database,
) -> None:
    """One not-ready process makes the slot bad whatever the others saw; a slot nobody
    reported records nothing (no data, not up)."""
    db = migrated_db
    await report_api_slot(db, START, ready=True, requests=500, errors=0)
    await report_api_slot(db, START, ready=False, requests=0, errors=0)
    assert await finish_api_slot(db, START) is False
    assert await finish_api_slot(db, START + timedelta(seconds=API_EVERY)) is None
    assert len(await _api_results(db)) == 1
    for n in range(1, 3):
        at = START + timedelta(seconds=API_EVERY * n)
        await report_api_slot(db, at, ready=False, requests=0, errors=0)
        await finish_api_slot(db, at)
    async with db.session() as session:
        state = await session.get(ComponentState, API)
    assert state is not None and state.incident_id is not None, "two bad slots: an incident"


async def test_the_http_metrics_count_answers_but_not_probes(app: FastAPI) -> None:
    """The accessor the API component reads counts answered requests and 5xx, leaving out
    /healthz, /readyz and /metrics."""
    from tests.conftest import client_for

    metrics = app.state.keel.http_metrics
    before = metrics.answered(skip=NOT_COUNTED)
    async with client_for(app) as http:
        for _ in range(3):
            assert (await http.get("/status.json")).status_code == 200
        await http.get("/healthz")
        await http.get("/readyz")
        await http.get("/metrics")
        await http.get("/no/such/page")
    requests, errors = metrics.answered(skip=NOT_COUNTED)
    assert (requests - before[0], errors - before[1]) == (4, 0)
    assert metrics.answered()[0] - before[0] == 7


async def test_a_running_kernel_reports_the_api_component(app: FastAPI) -> None:
    """A started Keel's monitor reports its own slot and records the API's result, which the
    status page shows as a component with an SLA."""
    keel = app.state.keel
    keel.state["deps.stop"].set()  # the kernel's own monitor would race this test's clock
    await keel.state["deps.monitor"]
    from keel.deps.monitor import ApiReporter as Reporter
    from keel.observability.health import run_checks

    async def ready() -> bool:
        return all(r.ok for r in (await run_checks(keel.readiness_checks(), timeout=3)).values())

    monitor = Monitor(
        keel.db, api=Reporter(lambda: keel.http_metrics.answered(skip=NOT_COUNTED), ready)
    )
    now = datetime.now(UTC).timestamp()
    slot_now = int(now // API_EVERY)
    await monitor.api_due(now)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000"
    ) as http:
        for _ in range(25):
            await http.get("/status.json")
    await monitor.api_due((slot_now + 1) * API_EVERY + 0.5)
    assert await monitor.api_due((slot_now + 1) * API_EVERY + API_GRACE + 0.5) is True
    (result,) = await _api_results(keel.db)
    assert result.ok and result.detail is not None and "of 25 requests" in result.detail
    data = await status_data(keel.db, now=datetime.fromtimestamp(now + 40, UTC))
    (api,) = [c for c in data["components"] if c["name"] == "API"]
    assert api["state"] == "operational" and api["sla"]["achieved"] == 100.0


# --- SLA arithmetic ------------------------------------------------------------------------------
def test_sla_arithmetic_is_exact() -> None:
    """Achieved, met and the error budget at and around the target, with decimal arithmetic
    (a float 100 - 99.9 is 0.0999…, which would spend the budget early)."""
    up = service.Uptime
    assert service.sla(up(999, 1000), 99.9, 30) == {
        "target": 99.9,
        "window_days": 30,
        "achieved": 99.9,
        "met": True,
        "budget_left": 0.0,
    }
    assert service.sla(up(998, 1000), 99.9, 30)["met"] is False
    assert service.budget_left(up(998, 1000), 99.9) == 0.0
    assert service.budget_left(up(9995, 10000), 99.9) == 0.5
    assert service.budget_left(up(99_999, 100_000), 99.99) == 0.9
    assert service.budget_left(up(10, 10), 100.0) == 1.0
    assert service.budget_left(up(9, 10), 100.0) == 0.0
    assert service.sla(up(9, 10), 100.0, 7)["met"] is False
    assert service.sla(up(3, 4), 75.0, 7)["met"] is True
    below = service.sla(up(9989, 9999), 99.9, 30)  # 99.89998…: rounds DOWN, never to 99.9
    assert (below["achieved"], below["met"]) == (99.899, False)
    assert up(2, 3).percent == 66.666 and up(99_999_9, 100_000_0).percent == 99.999
    assert service.sla(up(0, 0), 99.9, 30) == {
        "target": 99.9,
        "window_days": 30,
        "achieved": None,
        "met": None,
        "budget_left": None,
    }


def test_windows_are_whole_periods_including_the_current_one() -> None:
    """A 7-day window starts six UTC midnights before today's; 24 h starts 23 hours before
    this hour."""
    now = datetime(2026, 11, 10, 15, 42, tzinfo=UTC)
    assert service.window_start(now, 7) == datetime(2026, 11, 4, tzinfo=UTC)
    assert service.window_start(now, 1) == datetime(2026, 11, 10, tzinfo=UTC)
    assert service.window_start(now, 24, "hour") == datetime(2026, 11, 9, 16, tzinfo=UTC)


async def test_the_sla_on_the_page_uses_its_window_and_leaves_maintenance_out(
    migrated_db: Database,
) -> None:
    """A component's SLA counts probes of its window's days only, not those during
    maintenance, and the configured target and window of Keel's own components apply."""
    db = migrated_db
    now = datetime(2026, 11, 10, 15, 0, tzinfo=UTC)
    deps.declare(
        "gen",
        base_url="http://127.0.0.1:9",
        probe=deps.Probe("/h"),
        public=deps.Public("Generation", target=99.0, window_days=7),
    )

    async def probe(ok: bool, at: datetime, component: str = "gen") -> None:
        async with db.transaction() as session:
            await service.record_probe(session, component, ok=ok, latency_ms=1, detail="x", at=at)

    for n in range(5):  # eight days back: outside the 7-day window
        await probe(False, now - timedelta(days=7, hours=n))
    for n in range(99):  # six days back (inside) to today
        await probe(True, now - timedelta(days=6) + timedelta(hours=n))
    await probe(False, now - timedelta(minutes=5))
    async with db.transaction() as session:
        await service.add_maintenance(
            session,
            title="Upgrade",
            component="gen",
            starts_at=now - timedelta(hours=2),
            ends_at=now - timedelta(hours=1),
        )
    for n in range(10):  # failures during maintenance count nowhere
        await probe(False, now - timedelta(hours=2) + timedelta(minutes=n))
    await probe(True, now - timedelta(days=2), component="keel.database")
    spec.use_settings(
        {
            "keel_database": DependencySettings(sla_target=95.0, sla_window_days=3),
            "keel_workers": DependencySettings(public=False),
            "keel_api": DependencySettings(public_name="Public API"),
        }
    )
    data = await status_data(db, now=now)
    shown = {c["name"]: c for c in data["components"]}
    assert set(shown) == {"Public API", "Database", "Generation"}
    assert shown["Generation"]["sla"] == {
        "target": 99.0,
        "window_days": 7,
        "achieved": 99.0,
        "met": True,
        "budget_left": 0.0,
    }
    assert shown["Generation"]["uptime"]["7d"] == 99.0
    assert shown["Generation"]["uptime"]["90d"] == 94.285  # 94.2857…, rounded down
    assert shown["Database"]["sla"]["target"] == 95.0
    assert shown["Database"]["sla"]["window_days"] == 3 and shown["Database"]["sla"]["met"]
    assert shown["Public API"]["sla"]["achieved"] is None
