"""Keel's own settings take effect while running: pausing dependency probes and the jobs
retention interval."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest

from keel import Config, Keel
from keel.deps.monitor import Monitor
from keel.jobs import worker as worker_module
from keel.jobs.worker import Worker
from keel.settings import store
from keel.settings.service import lookup, set_value, unset_value, write


async def _set(keel: Keel, key: str, raw: Any) -> None:
    setting = lookup(key)
    await write(keel.db, lambda s: set_value(s, setting, raw, reason="test"))
    await store(keel).reload()


async def test_paused_probes_are_not_enqueued(keel: Keel) -> None:
    """With deps.probes_paused on, the monitor enqueues nothing; once unset it enqueues the
    due probes again."""
    later = time.time() + 3600  # slots the running kernel's own monitor has not taken
    await _set(keel, "deps.probes_paused", True)
    assert await Monitor(keel.db).enqueue_due(now=later) == 0
    await write(keel.db, lambda s: unset_value(s, lookup("deps.probes_paused"), reason="t"))
    await store(keel).reload()
    assert await Monitor(keel.db).enqueue_due(now=later) > 0


async def test_a_shorter_prune_interval_applies_to_a_running_worker(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running worker's scheduler prunes once at start with the 10-minute default, and
    every second after jobs.prune_interval is set to 1s, without a restart."""
    passes: list[float] = []
    keel = Keel(make_config(worker_in_process=False), modules=[])
    await keel.startup()

    async def counting_prune(*_args: Any, **_kwargs: Any) -> int:
        passes.append(asyncio.get_running_loop().time())
        return 0

    monkeypatch.setattr(worker_module, "prune_finished", counting_prune)
    task = asyncio.create_task(Worker(keel.db)._scheduler())
    try:
        await asyncio.sleep(2.5)
        assert len(passes) == 1
        await _set(keel, "jobs.prune_interval", "1s")
        await asyncio.sleep(3.5)
        assert len(passes) >= 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await keel.shutdown()
