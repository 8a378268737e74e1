"""Measure how long a committed setting change takes to reach another Keel process.

Shared by the propagation tests and `bench/settings.py`: the parent starts a kernel on the
database, spawns `tests.settings.watcher`, changes `prop.value` `changes` times and returns,
for each change, the seconds from its COMMIT returning to the child seeing it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from keel import Config, Keel, settings
from keel.settings.service import lookup, set_value, write
from keel.settings.spec import forget

ROOT = Path(__file__).resolve().parents[2]


async def _line(stream: asyncio.StreamReader, timeout: float) -> str:
    """The watcher's next report (`ready` or `seen …`), skipping any log lines."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        raw = await asyncio.wait_for(stream.readline(), max(left, 0.001))
        if not raw:
            raise RuntimeError("the watcher process exited")
        line = raw.decode().strip()
        if line == "ready" or line.startswith("seen "):
            return line


async def measure(config: Config, env: dict[str, str], *, changes: int = 5) -> list[float]:
    """Delays (seconds) from commit to the watcher process seeing each change."""
    settings.declare("prop.value", int, default=0)
    keel = Keel(config, modules=[])
    child: asyncio.subprocess.Process | None = None
    try:
        await keel.startup()  # migrates before the child starts
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        child_env.update(env)
        child_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), child_env.get("PYTHONPATH", "")]
        )
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.settings.watcher",
            cwd=ROOT,
            env=child_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert child.stdout is not None
        if await _line(child.stdout, 60) != "ready":
            raise RuntimeError("the watcher did not start")
        setting = lookup("prop.value")
        delays: list[float] = []
        stamps: list[float] = []

        def committed_now(_session: object) -> None:
            stamps.append(time.time())

        for value in range(1, changes + 1):

            async def change(session: AsyncSession, v: int = value) -> None:
                # The clock starts when COMMIT returns, before any other after-commit work.
                event.listen(session.sync_session, "after_commit", committed_now, once=True)
                await set_value(session, setting, v, reason="measure")

            await write(keel.db, change)
            committed = stamps[-1]
            seen = (await _line(child.stdout, 10)).split()
            if seen[:2] != ["seen", str(value)]:
                raise RuntimeError(f"unexpected watcher output {seen}")
            delays.append(float(seen[2]) - committed)
            await asyncio.sleep(0.05)
        await write(keel.db, lambda s: set_value(s, setting, -1, reason="stop"))
        await asyncio.wait_for(child.wait(), 20)
        return delays
    finally:
        if child is not None and child.returncode is None:
            child.kill()
            await child.wait()
        await keel.shutdown()
        forget("prop.value")
