"""`keel worker` runs jobs; `keel jobs list|show|cancel|retry` operates them."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.system import in_cli_transaction
from keel.core.clitools import DataDirOption, JsonOption, load_config, out, print_json, run
from keel.core.database import Database
from keel.core.migrate import prepare
from keel.jobs.api import job_data
from keel.jobs.models import Job
from keel.jobs.service import get_job, operate

__all__ = ["jobs_cli", "worker_cli"]

T = TypeVar("T")
group = typer.Typer(help="Operate jobs: list, show, cancel, retry.", no_args_is_help=True)
worker_group = typer.Typer(help="Run a job worker.", invoke_without_command=True)


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in data.items()}


@group.command("list")
def list_(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """The newest jobs."""
    config = load_config(data_dir=data_dir)

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        # unscoped: the CLI acts as the system, across tenants.
        query = select(Job).order_by(Job.id.desc()).limit(limit)
        if state is not None:
            query = query.where(Job.state == state)
        return [_plain(job_data(job)) for job in await session.scalars(query)]

    rows = run(in_cli_transaction(config, work))
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "kind", "queue", "state", "attempt", "created", "last error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["id"],
            escape(row["kind"]),
            row["queue"],
            row["state"],
            f"{row['attempt']}/{row['max_attempts']}",
            str(row["created_at"])[:19],
            escape((row["last_error"] or "")[:60]),
        )
    out.print(table if rows else "No jobs.")


@group.command("show")
def show(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    data_dir: DataDirOption = None,
) -> None:
    """One job, as JSON."""
    config = load_config(data_dir=data_dir)

    async def work(session: AsyncSession) -> dict[str, Any]:
        return _plain(job_data(await get_job(session, job_id)))

    print_json(run(in_cli_transaction(config, work)))


def _operate(action: str, job_id: str, data_dir: Any, as_json: bool) -> None:
    config = load_config(data_dir=data_dir)

    async def work(session: AsyncSession) -> dict[str, Any]:
        return _plain(job_data(await operate(session, job_id, action)))

    data = run(in_cli_transaction(config, work))
    if as_json:
        print_json(data)
    else:
        out.print(f"Job {data['id']} is now {data['state']}.", highlight=False)


@group.command("cancel")
def cancel_(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a job: at once if queued; a running job is asked to stop."""
    _operate("cancel", job_id, data_dir, as_json)


@group.command("retry")
def retry_(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a cancelled or discarded job again (its history is kept)."""
    _operate("retry", job_id, data_dir, as_json)


@worker_group.callback()
def worker(
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues (default: KEEL_WORKER_QUEUES).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=1000, help="Jobs run at once.")
    ] = None,
    claim_batch: Annotated[
        int | None,
        typer.Option(min=1, max=1000, help="Most jobs one claim takes (default: the concurrency)."),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run jobs until SIGTERM/SIGINT; then finish running ones within the grace period and
    give the rest back to the queue."""
    from keel.jobs.worker import Worker
    from keel.settings.module import start_settings

    config = load_config(data_dir=data_dir)

    async def go() -> None:
        db = Database(config)
        stop_settings: Callable[[], Awaitable[None]] | None = None
        try:
            await prepare(db, auto_migrate=config.should_auto_migrate)
            stop_settings = await start_settings(config, db)  # loaded, bound, kept current
            instance = Worker(
                db,
                queues=[q.strip() for q in queues.split(",")] if queues else config.worker_queues,
                concurrency=concurrency or config.worker_concurrency,
                claim_batch=claim_batch or config.worker_claim_batch,
                lease=config.job_lease_seconds,
                grace=float(config.shutdown_grace),
                completed_retention=timedelta(hours=config.job_retention_completed_hours),
                failed_retention=timedelta(days=config.job_retention_failed_days),
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, instance.stop)
            out.print(
                f"Worker {instance.worker_id} serving {', '.join(instance.queues)} "
                f"({instance.concurrency} at once).",
                highlight=False,
            )
            await instance.run()
        finally:
            if stop_settings is not None:
                await stop_settings()
            await db.dispose()

    run(go())


def jobs_cli() -> typer.Typer:
    """The `keel jobs` command group."""
    return group


def worker_cli() -> typer.Typer:
    """The `keel worker` command."""
    return worker_group
