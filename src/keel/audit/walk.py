"""The chain over raw rows: what an event's hash covers, read straight from the database, and
the walk that checks consecutive events. The sealer and `verify()` both hash through here.

It imports nothing from Keel, so `verify()` can run it as a script in a helper process that
starts in milliseconds: the script checks one `seq` range (its orders on stdin, JSON lines on
stdout). It must never write to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "HASHED",
    "RangeWalk",
    "batches",
    "digest",
    "range_sql",
    "select_list",
    "time_reader",
    "walk_range",
]

HASHED = (
    "action",
    "actor_id",
    "actor_label",
    "actor_type",
    "changes",
    "client_ip",
    "id",
    "origin",
    "outcome",
    "reason",
    "recorded_at",
    "resource_id",
    "resource_type",
    "seq",
    "span_id",
    "tenant_id",
    "trace_id",
    "user_agent",
)
"""The hashed fields in canonical (sorted) order: the content columns and `seq`. A raw row is
these, then `prev_hash` and `hash` (verification) or nothing more (sealing)."""

SEQ = HASHED.index("seq")
ID = HASHED.index("id")
PREV = len(HASHED)
HASH = len(HASHED) + 1

# PostgreSQL formats the time itself, exactly as `datetime.isoformat(timespec="microseconds")`
# of the UTC value does; SQLite stores SQLAlchemy's text form, turned into that by slicing.
_PG_TIME = "to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"
_SQLITE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
Time = Callable[[Any], Any]


def select_list(dialect: str) -> str:
    """The SQL select list of `HASHED`, in order, as `digest` wants the values."""
    columns = {"changes": "changes::text" if dialect == "postgresql" else "changes"}
    if dialect == "postgresql":
        columns["recorded_at"] = _PG_TIME
    return ", ".join(columns.get(name, name) for name in HASHED)


def range_sql(dialect: str, low: str, high: str) -> str:
    """The verification query of the events `low..high` (placeholders), in `seq` order."""
    return (
        f"SELECT {select_list(dialect)}, prev_hash, hash FROM keel_audit_events "  # noqa: S608 - constant columns, bound range
        f"WHERE seq >= {low} AND seq <= {high} ORDER BY seq"
    )


def _any_time(value: Any) -> Any:
    """A stored time in any other form, as the typed read path would render it."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value  # hashed as found: it cannot match
    if isinstance(value, datetime):
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.isoformat(timespec="microseconds")
    return value


def _sqlite_time(value: Any) -> Any:
    if type(value) is str and _SQLITE_TIME.fullmatch(value):
        return f"{value[:10]}T{value[11:]}+00:00"
    return _any_time(value)


def time_reader(dialect: str) -> Time | None:
    """How `digest` turns the selected `recorded_at` into its hashed text (None: as it is)."""
    return _sqlite_time if dialect == "sqlite" else None


def _changes(text: Any) -> Any:
    if not isinstance(text, str | bytes):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:  # what the typed path decodes and orjson refuses: integers past 64 bits, NaN
            return json.loads(text)
        except ValueError:
            return text  # not JSON at all: hashed as found, so it cannot match


def digest(prev: str, row: Sequence[Any], time: Time | None, seq: int | None = None) -> str:
    """`SHA-256(prev ‖ canonical JSON of the hashed fields)`, hex, from a raw row (`seq`
    overrides the row's, for sealing)."""
    data = dict(zip(HASHED, row, strict=False))
    if seq is not None:
        data["seq"] = seq
    if time is not None:
        data["recorded_at"] = time(data["recorded_at"])
    if data["changes"] is not None:
        data["changes"] = _changes(data["changes"])
    content = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(prev.encode() + content).hexdigest()


class RangeWalk:
    """Checks consecutive raw rows from `start`: no gap, each `prev_hash` links, each hash
    matches its content. With `prev` None the first row's `prev_hash` is taken as found (a
    range in the middle of the chain; whoever joins the ranges checks it)."""

    def __init__(
        self, start: int, prev: str | None, checkpoints: Iterable[int], time: Time | None
    ) -> None:
        self.start = start
        self.next_seq = start
        self.prev = prev
        self.first_prev: str | None = None  # the first row's prev_hash, when `prev` was None
        self.first_read = False
        self.checkpoints = frozenset(checkpoints)
        self.hashes: dict[int, str] = {}
        self.checked = 0
        self.broken: tuple[int, str] | None = None
        self._time = time

    def check(self, rows: Iterable[Sequence[Any]]) -> bool:
        """Check the next rows; False (and `broken` says where and why) at the first break."""
        expected, prev, time, checkpoints = self.next_seq, self.prev, self._time, self.checkpoints
        checked = 0
        try:
            for row in rows:
                seq = row[SEQ]
                if seq != expected:
                    self.broken = (expected, f"event {expected} is missing")
                    return False
                stored = row[PREV]
                if prev is None:
                    self.first_prev, self.first_read = stored, True
                elif stored != prev:
                    self.broken = (seq, "its prev_hash does not link to the event before")
                    return False
                try:
                    prev = digest(stored or "", row, time)
                except TypeError:  # a value no event can hold (e.g. bytes stored by hand)
                    prev = ""
                if prev != row[HASH]:
                    self.broken = (seq, "its content does not match its hash")
                    return False
                if seq in checkpoints:
                    self.hashes[seq] = prev
                expected += 1
                checked += 1
            return True
        finally:
            self.next_seq, self.prev = expected, prev
            self.checked += checked

    def outcome(self) -> dict[str, Any]:
        """What the joining side needs, as JSON-ready data."""
        return {
            "start": self.start,
            "checked": self.checked,
            "first_prev": self.first_prev,
            "first_read": self.first_read,
            "last": self.prev,
            "hashes": {str(seq): value for seq, value in self.hashes.items()},
            "broken": list(self.broken) if self.broken else None,
        }


async def batches(cursor: Any, size: int, *, ahead: bool) -> AsyncGenerator[Sequence[Any]]:
    """`cursor`'s rows, `size` at a time. With `ahead` the next batch is already requested
    while the caller hashes this one, so the database works while Python does."""
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            rows = await (pending or cursor.fetchmany(size))
            pending = asyncio.ensure_future(cursor.fetchmany(size)) if ahead and rows else None
            if not rows:
                return
            yield rows
    finally:
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending


async def walk_range(
    walk: RangeWalk,
    rows: AsyncIterator[Sequence[Any]],
    high: int,
    report: Callable[[], None],
) -> None:
    """Continue `walk` over `rows` (a batch at a time) up to `high`, reporting each batch."""
    async for batch in rows:
        ok = walk.check(batch)
        report()
        if not ok:
            return
    if walk.next_seq <= high:
        walk.broken = (walk.next_seq, f"event {walk.next_seq} is missing")


class _Cursor:
    """A blocking DB-API cursor behind the awaitable `fetchmany` that `batches` wants."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    async def fetchmany(self, size: int) -> Any:
        return self.cursor.fetchmany(size)


async def _helper(orders: dict[str, Any]) -> dict[str, Any]:
    dialect, size = orders["dialect"], int(orders["batch"])
    walk = RangeWalk(int(orders["low"]), None, orders["checkpoints"], time_reader(dialect))

    def report() -> None:
        sys.stdout.write(orjson.dumps({"checked": walk.checked}).decode() + "\n")
        sys.stdout.flush()

    if dialect == "sqlite":
        import sqlite3

        with contextlib.closing(sqlite3.connect(orders["dsn"], timeout=30)) as database:
            found = database.execute(range_sql(dialect, ":low", ":high"), orders)
            async with contextlib.aclosing(batches(_Cursor(found), size, ahead=False)) as rows:
                await walk_range(walk, rows, int(orders["high"]), report)
    else:
        import psycopg

        async with (
            await psycopg.AsyncConnection.connect(orders["dsn"]) as connection,
            connection.cursor(name="keel_audit_verify", binary=True) as cursor,
        ):
            await cursor.execute(range_sql(dialect, "%(low)s", "%(high)s"), orders)
            async with contextlib.aclosing(batches(cursor, size, ahead=True)) as rows:
                await walk_range(walk, rows, int(orders["high"]), report)
    return walk.outcome()


def _main() -> int:
    """Helper-process mode: check `seq` `low..high` and print progress, then the outcome."""
    orders = json.loads(sys.stdin.readline())
    outcome = asyncio.run(_helper(orders))
    sys.stdout.write(orjson.dumps({"outcome": outcome}).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
