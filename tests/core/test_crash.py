"""kill -9 in the middle of writes: the database stays intact and keeps every acknowledged
commit, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from sqlalchemy import text
    from keel import Config
    from keel.core.database import Database

    async def main() -> None:
        db = Database(Config(data_dir=sys.argv[1], database_url=sys.argv[2]))
        async with db.transaction() as session:
            await session.execute(text(
                "CREATE TABLE IF NOT EXISTS ledger (n INTEGER PRIMARY KEY, pad TEXT NOT NULL)"))
        n = 0
        while True:
            n += 1
            async with db.transaction() as session:
                await session.execute(
                    text("INSERT INTO ledger (n, pad) VALUES (:n, :pad)"),
                    {"n": n, "pad": "x" * 2000},
                )
            print(n, flush=True)  # acknowledged only after the commit returned

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_mid_write_loses_no_acknowledged_commit(
    tmp_path: Path, database_url: str, seed: int
) -> None:
    """A writer killed with SIGKILL at a random moment leaves a database that is intact
    (SQLite: integrity_check) and holds every row whose commit it had acknowledged."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    with subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "data"), database_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("KEEL_")},
    ) as writer:
        assert writer.stdout is not None
        acknowledged = 0
        deadline = time.monotonic() + 20
        stop_after = random.Random(seed).randint(50, 400)
        while acknowledged < stop_after and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            acknowledged = int(line)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
    assert acknowledged >= 50, "the writer never got going"
    assert set(range(1, acknowledged + 1)) <= _rows_kept(database_url)


def _rows_kept(database_url: str) -> set[int]:
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite+aiosqlite:///")
        with sqlite3.connect(path) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            return {row[0] for row in connection.execute("SELECT n FROM ledger")}
    import psycopg

    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as connection:
        return {row[0] for row in connection.execute("SELECT n FROM ledger")}
