"""Probes as scheduled jobs: every process with the monitor enqueues each component's probe
once per slot (`probe_every`; the cron slot table makes it exactly once across processes),
and whichever worker runs the job records the result."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import text

from keel import settings
from keel.core.database import Database
from keel.deps.service import prune, record_probe
from keel.deps.spec import Dependency, Probe, declared, dependency
from keel.jobs import JobContext, job
from keel.jobs.cron import enqueue_once
from keel.observability.logging import get_logger

__all__ = ["OWN_COMPONENTS", "PROBE_KIND", "Monitor", "check", "probe"]

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


@job(PROBE_KIND, queue="default", max_attempts=1, timeout=120)
async def probe(ctx: JobContext, name: str) -> dict[str, Any]:
    """Probe one component and record the result."""
    db = ctx.db
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
        title, failures, recoveries = OWN_COMPONENTS[name], 2, 1
    else:
        dep = dependency(name)
        ok, ms, detail = await check(dep)
        spec = dep.probe or Probe()
        title = dep.public.name if dep.public else name
        failures, recoveries = spec.failures, spec.recoveries
    async with db.transaction() as session:
        await record_probe(
            session,
            name,
            ok=ok,
            latency_ms=ms,
            detail=detail,
            failures_to_open=failures,
            successes_to_close=recoveries,
            title=title,
        )
    return {"ok": ok, "ms": ms}


def _schedule() -> dict[str, float]:
    every = {name: dep.probe_every for name, dep in declared().items() if dep.probe is not None}
    every.update(dict.fromkeys(OWN_COMPONENTS, OWN_EVERY))
    return every


class Monitor:
    """Enqueues due probes (each slot once, whichever process gets there first) and prunes."""

    def __init__(self, db: Database, *, tick: float = 1.0) -> None:
        self.db = db
        self.tick = tick
        self._seen: dict[str, int] = {}
        self._pruned = 0.0

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick)
