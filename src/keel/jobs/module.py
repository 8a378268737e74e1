"""The jobs module's registration: an in-process worker, the jobs API and CLI, permissions."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import TYPE_CHECKING

from keel.core.modules import KeelModule, PermissionSpec

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["JOB_PERMISSIONS", "jobs_module"]

JOB_PERMISSIONS = (
    PermissionSpec(
        "jobs:read", "See jobs, their attempts, progress and logs", ("admin", "operator", "viewer")
    ),
    PermissionSpec("jobs:cancel", "Cancel jobs", ("admin", "operator")),
    PermissionSpec("jobs:retry", "Retry cancelled or discarded jobs", ("admin", "operator")),
)


async def _start(keel: Keel) -> None:
    from keel.jobs.metrics import JobMetrics
    from keel.jobs.worker import Worker

    config = keel.config
    if not config.worker_in_process:
        return
    worker = Worker(
        keel.db,
        queues=config.worker_queues,
        concurrency=config.worker_concurrency,
        claim_batch=config.worker_claim_batch,
        lease=config.job_lease_seconds,
        grace=float(config.shutdown_grace),
        completed_retention=timedelta(hours=config.job_retention_completed_hours),
        failed_retention=timedelta(days=config.job_retention_failed_days),
        metrics=JobMetrics(keel.metrics_registry),
    )
    keel.state["jobs.worker"] = worker
    keel.state["jobs.task"] = asyncio.create_task(worker.run(), name="keel-jobs-worker")


async def _stop(keel: Keel) -> None:
    worker = keel.state.pop("jobs.worker", None)
    task = keel.state.pop("jobs.task", None)
    if worker is not None and task is not None:
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=worker.grace + 10)


def jobs_module() -> KeelModule:
    """Jobs' contributions."""
    import keel.jobs.worker  # noqa: F401 - declares the jobs settings
    from keel.jobs.api import jobs_router
    from keel.jobs.cli import jobs_cli, worker_cli

    return KeelModule(
        name="jobs",
        routers=(jobs_router,),
        on_startup=(_start,),
        on_shutdown=(_stop,),
        permissions=JOB_PERMISSIONS,
        cli=jobs_cli,
        more_cli=(("worker", worker_cli),),
    )
