"""Consumers read published versions from memory: no query per read, and a publish made by
another process reaches the cache through PostgreSQL LISTEN or Redis (the poll is set to a
minute, so only a notice can explain the speed), and through the poll when notices are lost."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import event

from keel import Config, Keel, create_app, registry
from keel.audit import bind_actor, reset_actor, system_actor
from keel.registry import cache_of, canonical_sql, service
from tests.conftest import TEST_MASTER_KEY

ROOT = Path(__file__).resolve().parents[2]


async def until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until `condition` held; AssertionError after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
async def kernel(
    make_config: Callable[..., Config], request: pytest.FixtureRequest
) -> AsyncIterator[Keel]:
    """A started kernel whose change poll is a minute (notices only)."""
    overrides = getattr(request, "param", {})
    if overrides.get("redis"):
        overrides = {"redis_url": request.getfixturevalue("redis_url")}
    app = create_app(make_config(changes_poll_interval=60.0, **overrides), configure_logs=False)
    async with LifespanManager(app):
        yield app.state.keel


async def _publish_here(keel: Keel, name: str, sql: str) -> None:
    token = bind_actor(system_actor("test"))
    try:
        async with keel.db.transaction() as session:
            try:
                asset = await service.find_asset(
                    session, "sql_query", name, tenant_id=None, lock=True
                )
                version = await service.add_draft(session, asset, {"sql": sql})
            except Exception:
                asset, version = await service.create_asset(
                    session, "sql_query", name, {"sql": sql}, tenant_id=None
                )
            await service.validate(session, asset, version.number)
            await service.publish(session, asset, version.number)
    finally:
        reset_actor(token)


def _run_publisher(config: Config, name: str, sql: str) -> float:
    """Run tests/registry/publisher.py in another process; the wall-clock time its publish
    committed (as it printed it)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")},
        "KEEL_DATABASE_URL": config.database_url,
        "KEEL_DATA_DIR": str(config.data_dir),
        "KEEL_CHANGES_POLL_INTERVAL": "60",
        "KEEL_CONFIG_FILE": str(Path(config.data_dir) / "absent.toml"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    if config.database_url.startswith("postgresql"):
        env["KEEL_MASTER_KEY"] = TEST_MASTER_KEY  # SQLite's key is the file in the data dir
    if config.redis_url:
        env["KEEL_REDIS_URL"] = config.redis_url
    completed = subprocess.run(
        [sys.executable, "-m", "tests.registry.publisher", name, sql],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("committed ")]
    assert len(lines) == 1, completed.stdout[-2000:]
    return float(lines[0].split()[1])


async def _publish_elsewhere_and_time_arrival(keel: Keel) -> float:
    """Seconds from another process's commit of version 2 of `q` until this cache has it."""
    cache = cache_of(keel)
    arrived: list[float] = []

    def has_version_2() -> bool:
        hit = cache.get("sql_query", "q")
        return hit is not None and hit.version == 2

    async def watch() -> None:
        await until(has_version_2, timeout=60)
        arrived.append(time.time())

    watcher = asyncio.create_task(watch())
    try:
        committed = await asyncio.to_thread(_run_publisher, keel.config, "q", "SELECT 'other'")
        await asyncio.wait_for(watcher, timeout=10)
    finally:
        watcher.cancel()
    return arrived[0] - committed


async def test_reads_come_from_memory_without_a_query(kernel: Keel) -> None:
    """After a publish the cache serves the version; a thousand reads run no SQL."""
    await _publish_here(kernel, "q", "SELECT 1")
    cache = cache_of(kernel)
    await until(lambda: cache.get("sql_query", "q") is not None, timeout=5)
    statements = 0

    def count(*_args: object) -> None:
        nonlocal statements
        statements += 1

    event.listen(kernel.db.engine.sync_engine, "before_cursor_execute", count)
    try:
        for _ in range(1000):
            found = registry.published("sql_query", "q")
    finally:
        event.remove(kernel.db.engine.sync_engine, "before_cursor_execute", count)
    assert statements == 0
    assert found is not None and found.version == 1
    assert found.data.sql == canonical_sql("SELECT 1")  # type: ignore[attr-defined]
    assert registry.published("sql_query", "absent") is None


async def test_rollback_and_archive_reach_the_cache(kernel: Keel) -> None:
    """The cache follows a rollback to the restored content and drops an archived asset."""
    cache = cache_of(kernel)
    await _publish_here(kernel, "q", "SELECT 1")
    await _publish_here(kernel, "q", "SELECT 2")
    await until(lambda: (hit := cache.get("sql_query", "q")) is not None and hit.version == 2, 5)
    token = bind_actor(system_actor("test"))
    try:
        async with kernel.db.transaction() as session:
            asset = await service.find_asset(session, "sql_query", "q", tenant_id=None, lock=True)
            await service.rollback(session, asset, 1, reason="undo")
        await until(
            lambda: (hit := cache.get("sql_query", "q")) is not None and hit.version == 3, 5
        )
        assert cache.get("sql_query", "q").data.sql == canonical_sql("SELECT 1")  # type: ignore[union-attr, attr-defined]
        async with kernel.db.transaction() as session:
            asset = await service.find_asset(session, "sql_query", "q", tenant_id=None, lock=True)
            await service.archive(session, asset, reason="gone")
    finally:
        reset_actor(token)
    await until(lambda: cache.get("sql_query", "q") is None, 5)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_another_process_publish_arrives_by_listen(kernel: Keel) -> None:
    """On PostgreSQL a publish committed by another process reaches this cache within a
    second of its commit, by LISTEN (the poll is a minute)."""
    await _publish_here(kernel, "q", "SELECT 1")
    cache = cache_of(kernel)
    await until(lambda: cache.get("sql_query", "q") is not None, 5)
    assert await _publish_elsewhere_and_time_arrival(kernel) < 1.0
    assert cache.get("sql_query", "q").data.sql == canonical_sql("SELECT 'other'")  # type: ignore[union-attr, attr-defined]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("kernel", [{"redis": True}], indirect=True)
async def test_another_process_publish_arrives_by_redis(kernel: Keel) -> None:
    """On SQLite with Redis a publish by another process reaches this cache within a second,
    by the Redis subscription (the poll is a minute and SQLite has no LISTEN)."""
    await _publish_here(kernel, "q", "SELECT 1")
    cache = cache_of(kernel)
    await until(lambda: cache.get("sql_query", "q") is not None, 5)
    await asyncio.sleep(0.3)  # the Redis subscription is being set up
    assert await _publish_elsewhere_and_time_arrival(kernel) < 1.0


async def test_a_lost_notice_is_caught_by_the_poll(make_config: Callable[..., Config]) -> None:
    """A publish whose notice never arrives (no LISTEN, no in-process delivery) still
    reaches the cache at the next poll of the topic's committed-change counter."""
    app = create_app(make_config(changes_poll_interval=0.2), configure_logs=False)
    async with LifespanManager(app):
        keel: Keel = app.state.keel
        cache = cache_of(keel)
        await _publish_here(keel, "q", "SELECT 1")
        await until(lambda: cache.get("sql_query", "q") is not None, 5)
        # Deafen the watcher: a publish now is heard only through the poll.
        from keel.core import changes as changes_module

        listener = keel.changes._listener
        if listener is not None:  # PostgreSQL: stop hearing NOTIFY
            await listener.stop()
            keel.changes._listener = None
        original = changes_module._deliver_local
        changes_module._deliver_local = lambda topics: None  # type: ignore[assignment]
        try:
            await _publish_here(keel, "q", "SELECT 2")
        finally:
            changes_module._deliver_local = original
        await until(lambda: cache.get("sql_query", "q").version == 2, timeout=5)  # type: ignore[union-attr]
