"""Verification: re-hash the chain in `seq` order, check that it has no gap and every link
holds, and check every signed checkpoint.

Rows are read raw (tuples, the JSON as text) and hashed by `keel.audit.walk`, as the sealer
hashed them. A long chain may be split over helper processes (`workers`): every row carries
its `prev_hash`, so each `seq` range is checked on its own and the ranges are joined where
they meet. Verification only reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from keel.audit import walk as walk_module
from keel.audit.chain import GENESIS, statement
from keel.audit.models import AuditAnchor, AuditCheckpoint, AuditEvent, AuditKey
from keel.audit.walk import RangeWalk, batches, range_sql, time_reader, walk_range
from keel.core.database import Database
from keel.core.keyring import Keyring
from keel.observability.logging import get_logger

__all__ = ["SPLIT_FROM", "Verification", "raw_rows", "verify"]

SPLIT_FROM = 100_000
"""With `workers=None`, chains shorter than this are checked in this process only."""

Progress = Callable[[int, int], None]
_logger = get_logger("keel.audit")


@dataclass
class Verification:
    """The outcome of `verify`."""

    ok: bool = True
    checked: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    broken_seq: int | None = None
    problem: str | None = None
    checkpoints: int = 0
    unsealed: int = 0
    details: list[str] = field(default_factory=list)

    def fail(self, seq: int | None, problem: str) -> Verification:
        if self.ok:
            self.ok, self.broken_seq, self.problem = False, seq, problem
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "broken_seq": self.broken_seq,
            "problem": self.problem,
            "checkpoints": self.checkpoints,
            "unsealed": self.unsealed,
        }


async def _public_keys(db: Database, ring: Keyring | None) -> dict[str, Ed25519PublicKey]:
    """The checkpoint keys. With the keyring, each public key is derived from its wrapped
    private key, so a key swapped into the table by someone without the master key fails."""
    async with db.session() as session:
        rows = list(await session.scalars(select(AuditKey)))
    keys: dict[str, Ed25519PublicKey] = {}
    for row in rows:
        if ring is not None:
            try:
                raw = ring.decrypt(row.private_key, context=b"audit-key:" + row.kid.encode())
                keys[row.kid] = Ed25519PrivateKey.from_private_bytes(raw).public_key()
            except Exception:  # noqa: BLE001, S112 - a key that does not open is not trusted
                continue
        else:
            keys[row.kid] = Ed25519PublicKey.from_public_bytes(row.public_key)
    return keys


# --- reading a range ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_rows(
    db: Database, low: int, high: int, size: int
) -> AsyncIterator[AsyncGenerator[Sequence[Any]]]:
    """Raw rows `low..high` in `seq` order, a batch at a time, read through the driver
    (no SQLAlchemy row processing); on PostgreSQL from a server-side cursor, read ahead."""
    bounds = {"low": low, "high": high}
    async with db.engine.connect() as connection:
        driver: Any = (await connection.get_raw_connection()).driver_connection
        if db.dialect == "postgresql":
            cursor = driver.cursor(name="keel_audit_verify", binary=True)
            await cursor.execute(range_sql(db.dialect, "%(low)s", "%(high)s"), bounds)
        else:
            cursor = await driver.execute(range_sql(db.dialect, ":low", ":high"), bounds)
        try:
            ahead = db.dialect == "postgresql"
            async with contextlib.aclosing(batches(cursor, size, ahead=ahead)) as rows:
                yield rows
        finally:
            await cursor.close()


class _Helper:
    """A helper process checking one range (`keel.audit.walk` run as a script)."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.checked = 0
        self.process: asyncio.subprocess.Process | None = None

    async def run(self, orders: dict[str, Any]) -> dict[str, Any] | None:
        """The range's outcome, or None if the helper could not do it."""
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # not the script's directory on sys.path: it is inside the package
                walk_module.__file__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError:
            return None
        process = self.process
        assert process.stdin is not None
        assert process.stdout is not None
        outcome: dict[str, Any] | None = None
        try:
            process.stdin.write(orjson.dumps(orders | {"low": self.low, "high": self.high}))
            process.stdin.write(b"\n")
            await process.stdin.drain()
            process.stdin.close()
            async for line in process.stdout:
                message = orjson.loads(line)
                if "checked" in message:
                    self.checked = int(message["checked"])
                else:
                    outcome = message.get("outcome")
            await process.wait()
        except (OSError, ValueError):
            outcome = None
        finally:
            self.stop()  # only if it has not ended: a walk abandoned, an error, a cancellation
            await process.wait()
        return outcome

    def stop(self) -> None:
        """End the helper if it still runs."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


def _dsn(db: Database) -> str | None:
    """What a helper process connects with (None: it cannot open this database)."""
    url = make_url(db.url)
    if db.dialect == "sqlite":
        path = url.database
        return path if path and path != ":memory:" and not path.startswith("file:") else None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _ranges(start: int, high: int, parts: int) -> list[tuple[int, int]]:
    size = -(-(high - start + 1) // parts)
    return [(low, min(high, low + size - 1)) for low in range(start, high + 1, size)]


def _workers(workers: int | None, total: int) -> int:
    if workers is not None:
        return max(1, workers)
    return 2 if total >= SPLIT_FROM and (os.cpu_count() or 1) >= 2 else 1


# --- verify ------------------------------------------------------------------------------------


async def _walk(
    db: Database,
    walk: RangeWalk,
    high: int,
    batch: int,
    report: Callable[[], None],
) -> None:
    """Check rows `walk.next_seq..high` in this process, continuing `walk`."""
    async with raw_rows(db, walk.next_seq, high, batch) as rows:
        await walk_range(walk, rows, high, report)


def _join(walk: RangeWalk, outcome: dict[str, Any]) -> None:
    """Continue `walk` (which ended where the helper's range starts) with its outcome."""
    if outcome["first_read"] and outcome["first_prev"] != walk.prev:
        walk.broken = (walk.next_seq, "its prev_hash does not link to the event before")
        return
    walk.checked += int(outcome["checked"])
    walk.hashes.update({int(seq): value for seq, value in outcome["hashes"].items()})
    walk.next_seq += int(outcome["checked"])
    walk.prev = outcome["last"] if outcome["checked"] else walk.prev
    if outcome["broken"] is not None:
        seq, problem = outcome["broken"]
        walk.broken = (int(seq), str(problem))


async def _check_chain(
    db: Database,
    walk: RangeWalk,
    high: int,
    *,
    workers: int,
    batch: int,
    progress: Progress | None,
) -> None:
    """Walk `walk.start..high`, the first range here and the others in helper processes."""
    total = high - walk.start + 1
    ranges = _ranges(walk.start, high, workers)
    dsn = _dsn(db) if len(ranges) > 1 else None
    helpers = [_Helper(low, top) for low, top in ranges[1:]] if dsn is not None else []
    orders = {
        "dialect": db.dialect,
        "dsn": dsn,
        "batch": batch,
        "checkpoints": sorted(walk.checkpoints),
    }
    tasks = [asyncio.create_task(helper.run(orders)) for helper in helpers]

    joined = 0  # helpers whose counts are in `walk.checked` already

    def report() -> None:
        if progress is not None:
            progress(walk.checked + sum(helper.checked for helper in helpers[joined:]), total)

    try:
        await _walk(db, walk, ranges[0][1] if helpers else high, batch, report)
        for helper, task in zip(helpers, tasks, strict=True):
            if walk.broken is not None:
                return
            while not task.done():  # keep the progress moving while the helper works
                await asyncio.wait({task}, timeout=0.25)
                report()
            outcome = task.result()
            if outcome is None:  # the helper could not do it: check its range here
                _logger.warning("audit verify helper failed", low=helper.low, high=helper.high)
                helper.checked = 0
                await _walk(db, walk, helper.high, batch, report)
            else:
                _join(walk, outcome)
            joined += 1
            report()
    finally:
        for helper, task in zip(helpers, tasks, strict=True):
            helper.stop()
            with contextlib.suppress(Exception):
                await task


async def verify(
    db: Database,
    *,
    ring: Keyring | None,
    from_seq: int | None = None,
    progress: Progress | None = None,
    batch: int = 5000,
    workers: int | None = 1,
) -> Verification:
    """Re-hash the chain from `from_seq` (default: its start) and check every checkpoint.

    `workers` > 1 splits the walk over that many processes (this one and helpers); None
    picks 2 for chains of `SPLIT_FROM` events or more on a machine with 2 CPUs or more.
    With `ring`, the checkpoint keys are vouched for by the master key.
    """
    # unscoped: the chain spans every tenant (the API allows deployment-level callers only).
    result = Verification()
    async with db.session() as session:
        anchor = await session.get(AuditAnchor, 1)
        # Checkpoints before the bounds: a checkpoint signed meanwhile is then never past
        # the head this walk stops at.
        checkpoints = {
            row.seq: row
            for row in await session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))
        }
        bounds = (
            await session.execute(select(func.min(AuditEvent.seq), func.max(AuditEvent.seq)))
        ).one()
        result.unsealed = int(
            await session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_(None))
            )
            or 0
        )
    low, high = bounds[0], bounds[1]
    start = anchor.seq + 1 if anchor is not None else 1
    if from_seq is not None:
        start = max(start, from_seq)
    expected_prev: str | None = (
        anchor.hash
        if anchor is not None and start == anchor.seq + 1
        else GENESIS
        if start == 1
        else None
    )
    if high is None:
        if checkpoints and max(checkpoints) > (anchor.seq if anchor else 0):
            return result.fail(max(checkpoints), "the chain is empty but a checkpoint covers it")
        return result
    if low is not None and low > start:
        return result.fail(start, f"events {start}..{low - 1} are missing")
    result.first_seq, result.last_seq = start, high
    walk = RangeWalk(start, expected_prev, checkpoints, time_reader(db.dialect))
    if high >= start:
        await _check_chain(
            db,
            walk,
            high,
            workers=_workers(workers, high - start + 1),
            batch=batch,
            progress=progress,
        )
    result.checked = walk.checked
    if walk.broken is not None:
        return result.fail(*walk.broken)
    return await _check_checkpoints(
        db, ring, result, checkpoints, hashes=walk.hashes, span=(start, high)
    )


async def _check_checkpoints(
    db: Database,
    ring: Keyring | None,
    result: Verification,
    checkpoints: dict[int, AuditCheckpoint],
    *,
    hashes: dict[int, str],
    span: tuple[int, int],
) -> Verification:
    start, high = span
    keys = await _public_keys(db, ring)
    for seq, point in checkpoints.items():
        if seq < start:
            continue
        key = keys.get(point.kid)
        try:
            if key is None:
                raise InvalidSignature
            key.verify(bytes.fromhex(point.signature), statement(seq, point.hash))
        except (InvalidSignature, ValueError):
            return result.fail(seq, "the checkpoint's signature is not valid")
        if seq > high:
            return result.fail(high + 1, f"the chain ends at {high} but checkpoint {seq} covers it")
        if hashes.get(seq) != point.hash:
            return result.fail(seq, "the chain does not pass through the signed checkpoint")
        result.checkpoints += 1
    return result
