"""Change notices: delivered after a commit and never after a rollback, heard through LISTEN,
Redis and the version poll, re-established after a lost connection, and coalesced."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text

from keel.core.changes import CHANNEL, ChangeWatcher, announce, topic_version
from keel.core.database import Database


class Counter:
    """A reload callback that counts its calls (and can be slow or fail)."""

    def __init__(self, *, delay: float = 0.0, fail: int = 0) -> None:
        self.calls = 0
        self.finished = 0
        self.delay = delay
        self.fail = fail

    async def __call__(self) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.calls <= self.fail:
            raise RuntimeError("reload failed on purpose")
        self.finished += 1


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def watcher(
    db: Database, *, poll: float = 60.0, redis: Any = None
) -> AsyncIterator[ChangeWatcher]:
    changes = ChangeWatcher(db, poll_interval=poll)
    await changes.start(redis=redis, scope="test")
    try:
        yield changes
    finally:
        await changes.stop()


async def watched(
    changes: ChangeWatcher,
    topic: str,
    reload: Counter,
    version: Callable[[], Awaitable[Any]] | None = None,
) -> None:
    """Watch `topic` and wait for its first load (which `watch` starts)."""
    changes.watch(topic, reload, version)
    await until(lambda: reload.calls == 1)


async def write(db: Database, topic: str, *, fail: bool = False) -> None:
    async with db.transaction() as session:
        await session.execute(text("SELECT 1"))
        await announce(session, topic)
        if fail:
            raise RuntimeError("the writer fails after announcing")


async def test_a_notice_follows_a_commit_never_a_rollback(migrated_db: Database) -> None:
    reload = Counter()
    async with watcher(migrated_db) as changes:
        await watched(changes, "things", reload)
        with pytest.raises(RuntimeError):
            await write(migrated_db, "things", fail=True)
        await asyncio.sleep(0.5)
        assert reload.calls == 1
        await write(migrated_db, "things")
        await until(lambda: reload.calls == 2)
        await write(migrated_db, "other")  # unwatched topics are ignored
        await asyncio.sleep(0.3)
        assert reload.calls == 2  # once, though PostgreSQL also delivered it by NOTIFY


async def test_a_later_commit_does_not_carry_a_rolled_back_notice(migrated_db: Database) -> None:
    reload = Counter()
    async with watcher(migrated_db) as changes:
        await watched(changes, "things", reload)
        async with migrated_db.session() as session:
            async with session.begin():
                await session.execute(text("SELECT 1"))
                await announce(session, "things")
                await session.rollback()
            async with session.begin():
                await session.execute(text("SELECT 1"))
        await asyncio.sleep(0.5)
        assert reload.calls == 1


async def test_the_version_poll_catches_a_change_without_a_notice(migrated_db: Database) -> None:
    reload = Counter()
    state = {"version": 1}

    async def version() -> int:
        return state["version"]

    async with watcher(migrated_db, poll=0.1) as changes:
        await watched(changes, "things", reload, version)
        await asyncio.sleep(0.4)
        assert reload.calls == 1  # an unchanged version reloads nothing
        state["version"] = 2
        await until(lambda: reload.calls == 2, timeout=3)


async def test_a_change_during_the_first_load_is_not_missed(migrated_db: Database) -> None:
    """The first load reads the version before it loads: a change made while it loads, whose
    notice is lost, is caught by the next poll."""
    state = {"version": 1}
    loads: list[int] = []

    async def version() -> int:
        return state["version"]

    async def reload() -> None:
        loads.append(state["version"])
        await asyncio.sleep(0.2)

    async with watcher(migrated_db, poll=0.1) as changes:
        changes.watch("things", reload, version)
        await until(lambda: loads == [1])
        state["version"] = 2  # while the first load runs; no notice
        await until(lambda: loads[-1] == 2, timeout=3)


async def test_reloads_coalesce_and_a_failing_reload_is_retried(migrated_db: Database) -> None:
    slow = Counter(delay=0.2)
    failing = Counter(fail=1)
    async with watcher(migrated_db) as changes:
        await watched(changes, "slow", slow)
        await until(lambda: slow.finished == 1)  # the first load is over
        for _ in range(50):
            changes.notice("slow")
        await until(lambda: slow.calls >= 2)
        for _ in range(50):
            changes.notice("slow")
        await asyncio.sleep(0.6)
        assert slow.calls == 3  # the burst during the second load made exactly one more
        changes.watch("failing", failing)  # its first load fails
        await until(lambda: failing.calls == 1)
        changes.notice("failing")  # the watcher survived the failure
        await until(lambda: failing.calls == 2)


async def _raw_notify(db: Database, topic: str) -> None:
    import psycopg

    url = db.url.replace("postgresql+psycopg://", "postgresql://")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, topic))


POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@POSTGRES_ONLY
async def test_postgres_notices_from_another_connection_arrive(migrated_db: Database) -> None:
    """A notice sent by another client (another process) reaches the watcher via LISTEN."""
    reload = Counter()
    async with watcher(migrated_db) as changes:
        await watched(changes, "things", reload)
        await _raw_notify(migrated_db, "things")
        await until(lambda: reload.calls == 2, timeout=2)


@POSTGRES_ONLY
async def test_a_cut_listen_connection_is_reopened_and_reloads(migrated_db: Database) -> None:
    reload = Counter()
    async with watcher(migrated_db) as changes:
        await watched(changes, "things", reload)
        listener = changes.listener
        assert listener is not None
        pid = listener.backend_pid()
        async with migrated_db.session() as session:
            await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await until(lambda: listener.reconnects == 1, timeout=10)
        await until(lambda: reload.calls == 2)  # missed notices: everything reloads
        assert listener.backend_pid() != pid
        await _raw_notify(migrated_db, "things")
        await until(lambda: reload.calls == 3, timeout=2)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_redis_carries_notices_both_ways(migrated_db: Database, redis: Any) -> None:
    reload = Counter()
    async with watcher(migrated_db, redis=redis) as changes:
        await watched(changes, "things", reload)
        # Heard: a notice another process published.
        await asyncio.sleep(0.2)  # the subscription is being set up
        await redis.publish(changes.redis_channel, "things")
        await until(lambda: reload.calls == 2, timeout=2)
        if migrated_db.dialect == "postgresql":
            return  # there NOTIFY tells the other processes; Redis is not needed
        # Told: a commit here is published for the other processes.
        pubsub = redis.pubsub()
        await pubsub.subscribe(changes.redis_channel)
        await write(migrated_db, "published")
        message = None
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                break
        await pubsub.aclose()
        assert message is not None and message["data"] == b"published"


async def test_each_committed_announcement_moves_its_topics_version(
    migrated_db: Database,
) -> None:
    """The topic's counter moves by one per committed announcing transaction (however many
    announcements it made), not on a rollback, and not for other topics."""
    db = migrated_db
    assert await topic_version(db, "alpha") == 0
    await write(db, "alpha")
    async with db.transaction() as session:
        await announce(session, "alpha")
        await announce(session, "alpha")
        await announce(session, "beta")
    with pytest.raises(RuntimeError):
        await write(db, "alpha", fail=True)
    assert await topic_version(db, "alpha") == 2
    assert await topic_version(db, "beta") == 1


async def test_concurrent_announcers_each_move_the_version(migrated_db: Database) -> None:
    """Transactions announcing the same topic at once are all counted (the counter is
    bumped as each commits, never lost to a race), and a poll on it sees every one."""
    db = migrated_db
    await asyncio.gather(*(write(db, "gamma") for _ in range(10)))
    assert await topic_version(db, "gamma") == 10


async def test_the_counter_poll_catches_a_change_whose_notice_was_lost(
    migrated_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every notice lost (no LISTEN, no local delivery), a watcher polling the topic's
    counter still reloads after each committed change."""
    import keel.core.changes as changes_module

    db = migrated_db
    reload = Counter()
    async with watcher(db, poll=0.05) as changes:
        if changes._listener is not None:  # PostgreSQL: stop hearing NOTIFY
            await changes._listener.stop()
            changes._listener = None
        monkeypatch.setattr(changes_module, "_deliver_local", lambda topics: None)
        await watched(changes, "delta", reload, lambda: topic_version(db, "delta"))
        for expected in (2, 3):
            await write(db, "delta")
            await until(lambda expected=expected: reload.finished == expected)
