"""Probes as scheduled jobs: every process with the monitor enqueues each component's probe
once per slot (`probe_every`; the cron slot table makes it exactly once across processes),
and whichever worker runs the job records the result."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import text, update
from sqlalchemy.exc import IntegrityError

from keel import settings
from keel.core.database import Database
from keel.deps.models import ApiSlot
from keel.deps.service import prune, record_probe
from keel.deps.spec import Dependency, Probe, Public, declared, dependency, public_of, settings_for
from keel.jobs import JobContext, job
from keel.jobs.cron import claim_slot, enqueue_once
from keel.observability.logging import get_logger

__all__ = [
    "API",
    "API_EVERY",
    "OWN_COMPONENTS",
    "PROBE_KIND",
    "ApiReporter",
    "Monitor",
    "api_healthy",
    "check",
    "finish_api_slot",
    "probe",
    "probe_now",
    "report_api_slot",
]

PROBE_KIND = "keel.deps.probe"
OWN_COMPONENTS = {"keel.database": "Database", "keel.workers": "Background jobs"}
"""Keel's own components, probed by the same jobs (a probe that runs proves a worker is up)."""
PROBES_PAUSED = settings.declare(
    "deps.probes_paused",
    bool,
    default=False,
    env="KEEL_DEPS_PROBES_PAUSED",
    description="Stop enqueueing dependency probes (e.g. during planned upstream work).",
)
OWN_EVERY = 30.0
API = "keel.api"
"""Keel's own HTTP service, judged by the serving processes themselves (not a probe job)."""
API_NAME = "API"
API_EVERY = 30.0
API_GRACE = 10.0
"""Seconds after a slot ends before its result is recorded: every process reports first
(judged by each process's clock, so the processes' clocks must agree to within a few
seconds)."""
API_CATCH_UP = 10
"""Most past slots one tick records (after a tick delayed or a database outage)."""
API_MIN_REQUESTS = 20
"""Fewer requests in a slot (all processes) are too few to judge the 5xx ratio."""
API_MAX_ERROR_PERCENT = 5
NOT_COUNTED = frozenset({"/healthz", "/readyz", "/metrics"})
_logger = get_logger("keel.deps")


async def check(dep: Dependency) -> tuple[bool, float | None, str]:
    """Probe `dep` once (not through its breaker: the probe must see the upstream itself).
    Returns (ok, latency ms, detail for operators)."""
    spec = dep.probe or Probe()
    url = spec.path if spec.path.startswith(("http://", "https://")) else dep.base_url + spec.path
    timeout = httpx.Timeout(dep.timeouts.read, connect=dep.timeouts.connect)
    started = time.perf_counter()
    try:
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            asyncio.timeout(dep.timeouts.total),
        ):
            response = await client.get(url)
    except Exception as exc:  # noqa: BLE001 - any failure to get an answer is a failed probe
        return False, None, f"{type(exc).__name__}: {exc}"[:500]
    ms = (time.perf_counter() - started) * 1000
    if response.status_code != spec.status:
        return False, ms, f"status {response.status_code}, expected {spec.status}"
    if spec.max_ms is not None and ms > spec.max_ms:
        return False, ms, f"answered in {ms:.0f} ms, more than {spec.max_ms:.0f}"
    if spec.json_field is not None:
        key, expected = spec.json_field
        try:
            value = response.json().get(key)
        except Exception:  # noqa: BLE001 - not JSON, or not an object
            return False, ms, "the answer is not a JSON object"
        if value != expected:
            return False, ms, f"{key} is {value!r}, expected {expected!r}"
    return True, ms, "ok"


async def probe_now(db: Database, name: str) -> dict[str, Any]:
    """Probe the component `name` now and record the result like a scheduled probe: it
    counts in uptime and may open or resolve the automatic incident. `keel.workers` is good
    by running at all (call it from a job); `keel.api` is not probed (see `finish_api_slot`)."""
    if name == API:
        raise ValueError(f"{API} is judged by the serving processes and is not probed")
    if name in OWN_COMPONENTS:
        ok, ms, detail = True, None, "ok"
        if name == "keel.database":
            started = time.perf_counter()
            try:
                async with db.session() as session:
                    await session.execute(text("SELECT 1"))
                ms = (time.perf_counter() - started) * 1000
            except Exception as exc:  # noqa: BLE001
                ok, detail = False, f"{type(exc).__name__}: {exc}"[:500]
        shown = public_of(Public(OWN_COMPONENTS[name]), settings_for(name), name)
        failures, recoveries = 2, 1
    else:
        dep = dependency(name)
        ok, ms, detail = await check(dep)
        spec = dep.probe or Probe()
        shown = dep.public
        failures, recoveries = spec.failures, spec.recoveries
    # A hidden component's incidents never show on the status page (status.py), so its
    # internal name may title them; a shown one's title is its public name only.
    title = shown.name if shown is not None else name
    async with db.transaction() as session:
        opened = await record_probe(
            session,
            name,
            ok=ok,
            latency_ms=ms,
            detail=detail,
            failures_to_open=failures,
            successes_to_close=recoveries,
            title=title,
        )
    return {
        "name": name,
        "ok": ok,
        "ms": ms,
        "detail": detail,
        "opened_incident": opened.id if opened else None,
    }


@job(PROBE_KIND, queue="default", max_attempts=1, timeout=120)
async def probe(ctx: JobContext, name: str) -> dict[str, Any]:
    """Probe one component and record the result."""
    result = await probe_now(ctx.db, name)
    return {"ok": result["ok"], "ms": result["ms"]}


# --- the API component ---------------------------------------------------------------------
def api_healthy(*, not_ready: int, requests: int, errors: int) -> bool:
    """Every reporting process ready and, with at least API_MIN_REQUESTS requests, at most
    API_MAX_ERROR_PERCENT % of them 5xx (integer arithmetic: no rounding at the edge)."""
    if not_ready:
        return False
    return requests < API_MIN_REQUESTS or errors * 100 <= API_MAX_ERROR_PERCENT * requests


def slot_start(index: int) -> datetime:
    """The start of API slot number `index` (slots of API_EVERY seconds since the epoch)."""
    return datetime.fromtimestamp(index * API_EVERY, UTC)


async def report_api_slot(
    db: Database, start: datetime, *, ready: bool, requests: int, errors: int
) -> None:
    """Add one process's view of the slot starting at `start` to the shared row."""
    values = {
        "reports": ApiSlot.reports + 1,
        "not_ready": ApiSlot.not_ready + (0 if ready else 1),
        "requests": ApiSlot.requests + requests,
        "errors": ApiSlot.errors + errors,
    }
    async with db.transaction() as session:
        # unscoped: monitor data is deployment-wide.
        bump = update(ApiSlot).where(ApiSlot.start == start).values(**values)
        if getattr(await session.execute(bump), "rowcount", 0):
            return
        try:
            async with session.begin_nested():
                session.add(
                    ApiSlot(
                        start=start,
                        reports=1,
                        not_ready=0 if ready else 1,
                        requests=requests,
                        errors=errors,
                    )
                )
        except IntegrityError:  # another process made the row meanwhile
            await session.execute(bump)


async def finish_api_slot(
    db: Database, start: datetime, *, title: str = API_NAME, now: datetime | None = None
) -> bool | None:
    """Record the API's result for the slot starting at `start`, once: the slot is claimed in
    the cron slot table in the same transaction, so only one process records it. Returns the
    result recorded, or None when another process did or no process reported."""
    async with db.transaction() as session:
        # unscoped: monitor data is deployment-wide.
        row = await session.get(ApiSlot, start)
        if row is None:
            return None
        if not await claim_slot(session, f"deps.api:{API}", start, now=now):
            return None
        await session.refresh(row)  # the claim waited for any other claimer: read its total
        ok = api_healthy(not_ready=row.not_ready, requests=row.requests, errors=row.errors)
        await record_probe(
            session,
            API,
            ok=ok,
            latency_ms=None,
            detail=(
                f"{row.reports} process(es) reported, {row.not_ready} not ready; "
                f"{row.errors} of {row.requests} requests answered 5xx"
            ),
            failures_to_open=2,
            successes_to_close=1,
            title=title,
            at=start,
        )
    return ok


@dataclass(frozen=True, slots=True)
class ApiReporter:
    """How a serving process sees its API: requests answered and 5xx so far (cumulative),
    and whether its readiness checks pass."""

    answered: Callable[[], tuple[int, int]]
    ready: Callable[[], Awaitable[bool]]


def _schedule() -> dict[str, float]:
    every = {name: dep.probe_every for name, dep in declared().items() if dep.probe is not None}
    every.update(dict.fromkeys(OWN_COMPONENTS, OWN_EVERY))
    return every


class Monitor:
    """Enqueues due probes (each slot once, whichever process gets there first) and prunes."""

    def __init__(self, db: Database, *, tick: float = 1.0, api: ApiReporter | None = None) -> None:
        self.db = db
        self.tick = tick
        self.api = api
        self._seen: dict[str, int] = {}
        self._pruned = 0.0
        self._api_slot: int | None = None
        self._api_counted = (0, 0)
        self._api_finished: int | None = None

    async def api_due(self, now: float | None = None) -> bool | None:
        """Report this process's view of the API slot that just ended, and record the result
        of every slot whose grace has passed since the last one recorded (once across
        processes; at most API_CATCH_UP slots back). A failed write is tried again on the
        next tick: nothing advances before its write committed. Returns the result of the
        last slot recorded, or None."""
        now = time.time() if now is None else now
        slot = int(now // API_EVERY)
        if self.api is not None:
            if self._api_slot is None:
                self._api_slot, self._api_counted = slot, self.api.answered()
            elif slot > self._api_slot:
                counted = self.api.answered()
                ready = await self.api.ready()
                await report_api_slot(
                    self.db,
                    slot_start(self._api_slot),
                    ready=ready,
                    requests=counted[0] - self._api_counted[0],
                    errors=counted[1] - self._api_counted[1],
                )
                self._api_slot, self._api_counted = slot, counted
        finished = int((now - API_GRACE) // API_EVERY) - 1
        if self._api_finished is None:
            self._api_finished = finished - 1
        first = max(self._api_finished + 1, finished - API_CATCH_UP + 1)
        shown = public_of(Public(API_NAME), settings_for(API), API_NAME)
        result = None
        for index in range(first, finished + 1):
            result = await finish_api_slot(
                self.db,
                slot_start(index),
                title=shown.name if shown else API_NAME,
                now=datetime.fromtimestamp(now, UTC),
            )
            self._api_finished = index  # only once its transaction committed
        return result

    async def enqueue_due(self, now: float | None = None) -> int:
        """Enqueue the probes whose slot has started and is not enqueued yet."""
        now = time.time() if now is None else now
        made = 0
        if PROBES_PAUSED.value:
            return made
        for name, every in _schedule().items():
            slot = int(now // every)
            if self._seen.get(name) == slot:
                continue
            at = datetime.fromtimestamp(slot * every, UTC)
            if await enqueue_once(
                self.db, f"deps.probe:{name}", at, PROBE_KIND, {"name": name}, now=at
            ):
                made += 1
            self._seen[name] = slot  # only once the slot is in the database (ours or not)
        if now - self._pruned > 600:
            self._pruned = now
            async with self.db.transaction() as session:
                await prune(session)
        return made

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set."""
        while not stop.is_set():
            try:
                await self.enqueue_due()
            except Exception as exc:  # noqa: BLE001 - the database may be down a while
                _logger.warning("enqueueing probes failed", error=str(exc))
            try:
                await self.api_due()
            except Exception as exc:  # noqa: BLE001 - the database may be down a while
                _logger.warning("recording the API's state failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick)
