"""A standalone `keel worker` applies the deployment's `deps` configuration like `keel serve`:
probe jobs it runs use keel.toml's settings, and a bad setting stops it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from keel import Config
from keel.core.database import Database
from keel.deps.models import ComponentState
from keel.deps.monitor import PROBE_KIND
from keel.jobs import Job, enqueue
from tests.conftest import TEST_MASTER_KEY
from tests.deps.upstream import Upstream
from tests.test_serve import keel_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env(config: Config, tmp_path: Path, toml: Path, **extra: str) -> dict[str, str]:
    return keel_env(
        KEEL_DATABASE_URL=config.effective_database_url,
        KEEL_DATA_DIR=str(tmp_path / "data"),
        KEEL_MASTER_KEY=TEST_MASTER_KEY,
        KEEL_AUTO_MIGRATE="false",
        KEEL_LOG_LEVEL="warning",
        KEEL_CONFIG_FILE=str(toml),
        **extra,
    )


def _spawn_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`keel worker` serving the default queue, its output in `log`."""
    with log.open("wb") as output:  # the child keeps its own copy of the file
        return subprocess.Popen(
            [sys.executable, "-m", "keel", "worker", "--queues", "default"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def test_a_standalone_worker_probes_with_the_keel_toml_settings(
    config: Config, migrated_db: Database, upstream: Upstream, tmp_path: Path
) -> None:
    """A dependency only keel.toml declares is probed by a `keel worker` process at the path
    keel.toml gives, and the result is recorded (without the configuration applied the job
    fails with LookupError)."""
    toml = tmp_path / "keel.toml"
    toml.write_text(
        f'[deps.extra]\nbase_url = "{upstream.url}"\n[deps.extra.probe]\npath = "/from-toml"\n'
    )
    async with migrated_db.transaction() as session:
        job = await enqueue(session, PROBE_KIND, {"name": "extra"})
    log = tmp_path / "worker.log"
    process = _spawn_worker(_env(config, tmp_path, toml), log)
    try:
        deadline = time.monotonic() + 40
        state = "available"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the worker exited ({process.returncode}):\n{log.read_text()}")
            async with migrated_db.session() as session:
                state = (await session.get(Job, job.id, populate_existing=True)).state  # type: ignore[union-attr]
            if state in ("completed", "discarded", "cancelled"):
                break
            await asyncio.sleep(0.2)  # the upstream answers from this event loop meanwhile
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert state == "completed", log.read_text()
    assert [path for _, path, _ in upstream.hits] == ["/from-toml"]
    async with migrated_db.session() as session:
        recorded = await session.scalar(
            select(ComponentState).where(ComponentState.component == "extra")
        )
    assert recorded is not None and recorded.last_ok is True


def test_a_bad_setting_stops_a_standalone_worker(config: Config, tmp_path: Path) -> None:
    """`keel worker` refuses settings naming an undeclared dependency without a base URL with
    one line naming it (exit 2), before running any job."""
    toml = tmp_path / "keel.toml"
    toml.write_text("[deps.ghost]\nsla_target = 99\n")
    result = subprocess.run(
        [sys.executable, "-m", "keel", "worker"],
        cwd=ROOT,
        env=_env(config, tmp_path, toml),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("keel: error: invalid configuration: deps.ghost: ")
    assert "Worker" not in result.stdout
