"""`keel audit …`: verify the chain, export events, print checkpoints, prune with an archive."""

from __future__ import annotations

import csv
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from keel.core.clitools import DataDirOption, JsonOption, fail, load_config, out, print_json, run
from keel.core.config import Config
from keel.core.database import Database
from keel.core.keyring import Keyring, load_master_key
from keel.core.migrate import prepare

__all__ = ["audit_cli"]

T = TypeVar("T")
group = typer.Typer(
    help="The audit trail: verify, export, checkpoints, retention.", no_args_is_help=True
)


async def _with_db(config: Config, work: Callable[[Database], Awaitable[T]]) -> T:
    db = Database(config)
    try:
        await prepare(db, auto_migrate=config.should_auto_migrate)
        return await work(db)
    finally:
        await db.dispose()


async def _keyring(config: Config, db: Database) -> Keyring | None:
    try:
        ring = Keyring(load_master_key(config))
    except Exception:  # noqa: BLE001 - verification can still use the stored public keys
        return None
    await ring.load(db)
    return ring


@group.command("verify")
def verify_(
    from_seq: Annotated[
        int | None, typer.Option("--from", min=1, help="Start at this seq.")
    ] = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-hash the chain and check its signed checkpoints. Exit 0 when intact, 1 otherwise."""
    from keel.audit.service import seal_all, verify

    config = load_config(data_dir=data_dir)
    show = sys.stderr.isatty() and not as_json

    async def work(db: Database) -> tuple[Any, bool]:
        await seal_all(db)
        ring = await _keyring(config, db)
        with Progress(
            TextColumn("verifying"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} events"),
            TimeRemainingColumn(),
            disable=not show,
            transient=True,
        ) as bar:
            task = bar.add_task("verify", total=None)
            result = await verify(
                db,
                ring=ring,
                from_seq=from_seq,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                workers=None,  # a long chain is split over a helper process
            )
        return result, ring is not None

    result, trusted_keys = run(_with_db(config, work))
    if as_json:
        print_json({**result.as_dict(), "keys_checked_against_master_key": trusted_keys})
    elif result.ok:
        out.print(
            f"Intact: {result.checked:,} events "
            f"(seq {result.first_seq or 0}..{result.last_seq or 0}), "
            f"{result.checkpoints} signed checkpoint(s)"
            + (f", {result.unsealed} not yet sealed" if result.unsealed else "")
            + ".",
            highlight=False,
        )
        if not trusted_keys:
            out.print("Note: no master key here, so checkpoint keys were taken from the database.")
    else:
        out.print(
            f"[bold red]Broken at seq {result.broken_seq}:[/] {result.problem}", highlight=False
        )
    if not result.ok:
        raise typer.Exit(1)


@group.command("export")
def export(
    format_: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    since: Annotated[
        datetime | None, typer.Option(help="Only events recorded at or after this time (UTC).")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Stream events in chain order, one batch in memory at a time."""
    from keel.audit.models import CONTENT_COLUMNS
    from keel.audit.service import export_rows

    if format_ not in ("jsonl", "csv"):
        fail(f"--format must be jsonl or csv, not {format_!r}")
    config = load_config(data_dir=data_dir)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    target = output.open("w", encoding="utf-8", newline="") if output else sys.stdout

    async def work(db: Database) -> int:
        count = 0
        writer = None
        if format_ == "csv":
            writer = csv.DictWriter(target, fieldnames=["seq", *CONTENT_COLUMNS, "hash"])
            writer.writeheader()
        async for row in export_rows(db, since=since):
            if writer is not None:
                writer.writerow(
                    {
                        k: orjson.dumps(v).decode() if isinstance(v, dict) else v
                        for k, v in row.items()
                    }
                )
            else:
                target.write(orjson.dumps(row).decode() + "\n")
            count += 1
        return count

    try:
        count = run(_with_db(config, work))
    finally:
        if output:
            target.close()
    if output:
        out.print(f"Exported {count:,} events to {output}.", highlight=False)


@group.command("checkpoint")
def checkpoint_(
    output: Annotated[
        Path | None, typer.Option(help="Also append it (one JSON line) to this file.")
    ] = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Seal, sign a checkpoint of the head now, and print it (keep a copy off this host)."""
    from keel.audit.service import checkpoint, seal_all

    config = load_config(data_dir=data_dir)

    async def work(db: Database) -> dict[str, Any] | None:
        await seal_all(db)
        ring = await _keyring(config, db)
        if ring is None:
            fail("signing a checkpoint needs the master key", hint="set KEEL_MASTER_KEY")
        await checkpoint(db, ring, force=True)
        from sqlalchemy import select

        from keel.audit.models import AuditCheckpoint

        async with db.session() as session:
            row = await session.scalar(
                select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1)
            )
        if row is None:
            return None
        return {
            "seq": row.seq,
            "hash": row.hash,
            "kid": row.kid,
            "signature": row.signature,
            "created_at": row.created_at.isoformat(),
        }

    data = run(_with_db(config, work))
    if data is None:
        fail("the audit trail is empty: nothing to checkpoint")
    if output:
        with output.open("a", encoding="utf-8") as handle:
            handle.write(orjson.dumps(data).decode() + "\n")
    if as_json:
        print_json(data)
    else:
        out.print(
            f"Checkpoint at seq {data['seq']}: {data['hash']} (key {data['kid']})", highlight=False
        )


@group.command("prune")
def prune_(
    archive: Annotated[Path, typer.Option(help="JSON-lines file the pruned events go to first.")],
    before: Annotated[
        datetime | None,
        typer.Option(
            help="Prune sealed events recorded before this time (UTC). "
            "Default: now minus KEEL_AUDIT_RETENTION_DAYS."
        ),
    ] = None,
    reason: Annotated[
        str, typer.Option(help="Why (recorded in the audit.prune event).")
    ] = "retention",
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Archive, then delete, sealed events older than --before; the chain stays verifiable."""
    from sqlalchemy import func, select

    from keel.audit.context import bind_actor, system_actor
    from keel.audit.models import AuditEvent
    from keel.audit.service import export_rows, prune, seal_all

    config = load_config(data_dir=data_dir)
    if before is None:
        if config.audit_retention_days is None:
            fail(
                "no --before and no retention configured",
                hint="pass --before DATE or set KEEL_AUDIT_RETENTION_DAYS",
            )
        before = datetime.now(UTC) - timedelta(days=config.audit_retention_days)
    if before.tzinfo is None:
        before = before.replace(tzinfo=UTC)
    if archive.exists():
        fail(f"{archive} exists", hint="choose a new archive file; nothing was pruned")

    async def work(db: Database) -> dict[str, int]:
        bind_actor(system_actor("cli"))
        await seal_all(db)
        async with db.session() as session:
            through = await session.scalar(
                select(func.max(AuditEvent.seq)).where(
                    AuditEvent.recorded_at < before, AuditEvent.seq.is_not(None)
                )
            )
        if through is None:
            return {"archived": 0, "deleted": 0, "through_seq": 0}
        archived = 0
        with archive.open("w", encoding="utf-8") as handle:
            async for row in export_rows(db):
                if row["seq"] is None or row["seq"] > through:
                    break
                handle.write(orjson.dumps(row).decode() + "\n")
                archived += 1
        deleted = await prune(db, through_seq=int(through), reason=reason)
        await seal_all(db)
        return {"archived": archived, "deleted": deleted, "through_seq": int(through)}

    data = run(_with_db(config, work))
    if as_json:
        print_json(data)
    else:
        out.print(
            f"Archived {data['archived']:,} and pruned {data['deleted']:,} events "
            f"(through seq {data['through_seq']}) to {archive}.",
            highlight=False,
        )


def audit_cli() -> typer.Typer:
    """The `keel audit` command group."""
    return group
