"""Job metrics: queue depth per state, enqueue-to-start latency, run time, failures by class."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from keel.core.database import Database
from keel.jobs.models import Job

__all__ = ["JobMetrics"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class _Depth(Collector):
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "keel_jobs",
            "Jobs per queue and state (refreshed by the worker)",
            labels=["queue", "state"],
        )
        for (queue, state), count in sorted(self.counts.items()):
            family.add_metric([queue, state], count)
        yield family


class JobMetrics:
    """The worker's metrics, registered in the kernel's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.depth = _Depth()
        registry.register(self.depth)
        self.wait = Histogram(
            "keel_job_wait_seconds",
            "From due (run_at) to claimed",
            ["queue"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.run_time = Histogram(
            "keel_job_run_seconds",
            "Run time of an attempt",
            ["kind", "outcome"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.failures = Counter(
            "keel_job_failures",
            "Failed attempts by class",
            ["kind", "failure_class"],
            registry=registry,
        )

    async def refresh_depth(self, db: Database) -> None:
        """Count jobs per queue and state (one grouped query)."""
        async with db.session() as session:
            # unscoped: an operator's metric over every tenant's jobs.
            rows = (
                await session.execute(
                    select(Job.queue, Job.state, func.count()).group_by(Job.queue, Job.state)
                )
            ).all()
        self.depth.counts = {(queue, state): int(count) for queue, state, count in rows}
