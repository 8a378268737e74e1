"""`keel worker` runs no kernel yet uses the runtime settings: it loads them strictly at
start, and a change made elsewhere reaches the running worker process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from keel import Config, Keel
from keel.core.ids import new_id
from keel.jobs.models import Job, JobState
from keel.settings.service import lookup, set_value, write
from tests.conftest import TEST_MASTER_KEY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _worker(config: Config, tmp_path: Path, **extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(
        KEEL_DATABASE_URL=config.effective_database_url,
        KEEL_DATA_DIR=str(tmp_path / "data"),
        KEEL_MASTER_KEY=TEST_MASTER_KEY,
        KEEL_AUTO_MIGRATE="false",
        KEEL_CHANGES_POLL_INTERVAL="0.2",
        KEEL_LOG_LEVEL="warning",
        KEEL_CONFIG_FILE=str(tmp_path / "absent.toml"),
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]),
        **extra,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "keel", "worker", "--queues", "settings-test"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def _old_finished_job(keel: Keel) -> str:
    """A completed job long past its retention (any pass of the pruner deletes it)."""
    long_ago = datetime.now(UTC) - timedelta(days=400)
    job = Job(
        id=new_id(),
        queue="settings-test",
        kind="settings.test",
        args={},
        state=JobState.COMPLETED,
        run_at=long_ago,
        created_at=long_ago,
        finished_at=long_ago,
    )
    async with keel.db.transaction() as session:
        session.add(job)
    return job.id


async def _exists(keel: Keel, job_id: str) -> bool:
    async with keel.db.session() as session:
        # unscoped: the test looks up its own job.
        return await session.scalar(select(Job.id).where(Job.id == job_id)) is not None


async def _gone_within(keel: Keel, job_id: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not await _exists(keel, job_id):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_running_worker_applies_a_changed_prune_interval(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """A standalone worker prunes at start and then waits the 10-minute default; once
    jobs.prune_interval is set to 1s elsewhere it prunes again within seconds."""
    config = make_config(worker_in_process=False, master_key=TEST_MASTER_KEY)
    keel = Keel(config, modules=[])
    await keel.startup()
    process: subprocess.Popen[str] | None = None
    try:
        first = await _old_finished_job(keel)
        process = _worker(config, tmp_path)
        assert await _gone_within(keel, first, 60), "the worker never made its first pass"
        second = await _old_finished_job(keel)
        await asyncio.sleep(2.5)
        assert await _exists(keel, second), "pruned before the setting changed"
        setting = lookup("jobs.prune_interval")
        await write(keel.db, lambda s: set_value(s, setting, "1s", reason="test"))
        assert await _gone_within(keel, second, 8), "the worker kept the old interval"
        assert process.poll() is None
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            output, _ = await asyncio.to_thread(process.communicate, timeout=30)
            assert process.returncode == 0, output
        await keel.shutdown()


async def test_an_invalid_environment_value_stops_the_worker(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """`keel worker` validates the settings' environment variables at start: a bad one
    fails with one line naming the variable."""
    config = make_config(worker_in_process=False, master_key=TEST_MASTER_KEY)
    keel = Keel(config, modules=[])
    await keel.startup()  # migrated, so the worker fails on the variable alone
    await keel.shutdown()
    process = _worker(config, tmp_path, KEEL_JOBS_PRUNE_INTERVAL="lots")
    try:
        output, _ = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert "keel: error:" in output and "KEEL_JOBS_PRUNE_INTERVAL" in output, output
    assert "Traceback" not in output
