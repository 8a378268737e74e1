"""Change notices: tell every Keel process that state it keeps in memory has changed.

A writer calls `announce(session, topic)` inside its transaction. On PostgreSQL that queues a
`pg_notify`, which the server delivers only if the transaction commits; after the commit the
notice is also delivered to this process's watchers and published to Redis when configured.
A `ChangeWatcher` (one per kernel, `keel.changes`) hears notices through a reconnecting
`LISTEN` connection, a Redis subscription and the in-process path, and polls each topic's
version query as the fallback that guarantees convergence when notices are lost. See
docs/changes.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import event, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from keel.core.database import TCP_KEEPALIVES, Database
from keel.core.models import ChangeVersion

__all__ = ["CHANNEL", "ChangeWatcher", "PgListener", "announce", "topic_version"]

CHANNEL = "keel_changes"
"""The PostgreSQL notification channel (and the Redis channel's prefix)."""

_INFO_KEY = "keel.changes"
_logger = structlog.get_logger("keel.changes")
_watchers: weakref.WeakSet[ChangeWatcher] = weakref.WeakSet()
_background: set[asyncio.Task[Any]] = set()


async def announce(session: AsyncSession, topic: str) -> None:
    """Announce a change of `topic`, delivered only once the session's transaction commits.

    The commit also adds one to the topic's row in `keel_change_versions` (as its last
    statement, so the row is locked only for the commit itself): watchers poll that counter,
    which moves with every committed change whatever order the changes' ids were taken in."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_notify(:channel, :topic)"), {"channel": CHANNEL, "topic": topic}
        )
    session.info.setdefault(_INFO_KEY, set()).add(topic)


async def topic_version(db: Database, topic: str) -> int:
    """How many committed transactions have announced `topic` (0 if none): the version a
    watcher polls (`watch(topic, reload, version=lambda: topic_version(db, topic))`)."""
    async with db.session() as session:
        found = await session.scalar(
            select(ChangeVersion.version).where(ChangeVersion.topic == topic)
        )
    return int(found or 0)


def _bump(dialect: str, topic: str) -> Any:
    insert: Any = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(ChangeVersion).values(topic=topic, version=1)
    return statement.on_conflict_do_update(
        index_elements=[ChangeVersion.topic],
        set_={"version": ChangeVersion.version + 1},
    )


@event.listens_for(Session, "before_commit")
def _before_commit(sync_session: Session) -> None:
    topics: set[str] | None = sync_session.info.get(_INFO_KEY)
    if not topics:
        return
    dialect = sync_session.get_bind().dialect.name
    for topic in sorted(topics):  # one lock order for every announcing transaction
        sync_session.execute(_bump(dialect, topic))


@event.listens_for(Session, "after_commit")
def _after_commit(sync_session: Session) -> None:
    topics: set[str] | None = sync_session.info.pop(_INFO_KEY, None)
    if not topics:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    loop.call_soon(_deliver_local, tuple(sorted(topics)))


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(sync_session: Session, previous: Any) -> None:
    if previous.parent is None:  # the whole transaction, not a savepoint, was rolled back
        sync_session.info.pop(_INFO_KEY, None)


def _deliver_local(topics: tuple[str, ...]) -> None:
    published: set[int] = set()
    for watcher in list(_watchers):
        listener = watcher.listener
        if listener is not None and listener.connected.is_set():
            continue  # PostgreSQL delivers the NOTIFY to every listener, this one included
        for topic in topics:
            watcher.notice(topic)
        redis = watcher.redis
        if redis is not None and id(redis) not in published:
            published.add(id(redis))
            _spawn(_publish(redis, watcher.redis_channel, topics))


async def _publish(redis: Any, channel: str, topics: Iterable[str]) -> None:
    try:
        for topic in topics:
            await redis.publish(channel, topic)
    except Exception as exc:  # noqa: BLE001 - the poll still carries the change
        _logger.warning("change notice not published to Redis", error=str(exc))


def _spawn(coroutine: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


class PgListener:
    """A dedicated autocommit PostgreSQL connection that LISTENs on `channels`, for good.

    The connection uses TCP keepalives and is pinged when idle, so a dead or half-open
    connection is noticed; it is then reopened with backoff and `on_reconnect` runs (notices
    sent meanwhile were missed). `on_notify(channel, payload)` runs for each notification.
    """

    IDLE_PING = 20.0
    PING_TIMEOUT = 5.0
    FIRST_BACKOFF = 0.2
    MAX_BACKOFF = 10.0

    def __init__(
        self,
        url: str,
        channels: Iterable[str],
        on_notify: Callable[[str, str], None],
        *,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        """`url`: a SQLAlchemy or libpq PostgreSQL URL."""
        self.url = url.replace("postgresql+psycopg://", "postgresql://")
        self.channels = tuple(channels)
        self.on_notify = on_notify
        self.on_reconnect = on_reconnect
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._connection: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, wait: float = 5.0) -> bool:
        """Start listening; True once connected within `wait` seconds (it keeps trying)."""
        self._task = asyncio.create_task(self._run(), name="keel-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), timeout=wait)
        return self.connected.is_set()

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._close()

    def backend_pid(self) -> int | None:
        """The listening connection's server process id (tests use it to cut the connection)."""
        return None if self._connection is None else int(self._connection.info.backend_pid)

    async def _run(self) -> None:
        backoff = self.FIRST_BACKOFF
        ever_connected = False
        while True:
            try:
                await self._connect()
                backoff = self.FIRST_BACKOFF
                if ever_connected:
                    self.reconnects += 1
                    if self.on_reconnect is not None:
                        self.on_reconnect()
                ever_connected = True
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect; polling covers the gap
                # Warn once per outage (the first failure); its retries stay quiet.
                first_failure = backoff == self.FIRST_BACKOFF
                (_logger.warning if first_failure else _logger.debug)(
                    "LISTEN connection failed; reconnecting", error=str(exc)
                )
            self.connected.clear()
            await self._close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.MAX_BACKOFF)

    async def _connect(self) -> None:
        import psycopg

        self._connection = await psycopg.AsyncConnection.connect(
            self.url,
            autocommit=True,
            connect_timeout=5,
            **TCP_KEEPALIVES,
        )
        for channel in self.channels:
            await self._connection.execute(f'LISTEN "{channel}"')
        self.connected.set()

    async def _listen(self) -> None:
        connection = self._connection
        while True:
            async for note in connection.notifies(timeout=self.IDLE_PING):
                self.on_notify(note.channel, note.payload)
            # Idle for a while: make sure the connection is still alive.
            await asyncio.wait_for(connection.execute("SELECT 1"), timeout=self.PING_TIMEOUT)

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=2.0)


_FAILED = object()  # the last reload failed: the next poll reloads again


@dataclass(slots=True)
class _Topic:
    reload: Callable[[], Awaitable[None]]
    version: Callable[[], Awaitable[Any]] | None
    last_version: Any = _FAILED  # until the first load reads it
    dirty: bool = False
    task: asyncio.Task[None] | None = None
    failures: int = 0


class ChangeWatcher:
    """Reloads each watched topic when a notice for it arrives or its version changes."""

    def __init__(self, db: Database, *, poll_interval: float = 1.0) -> None:
        """`poll_interval`: seconds between version polls (the fallback)."""
        self.db = db
        self.poll_interval = poll_interval
        self.redis: Any = None
        self.redis_channel = CHANNEL
        self._topics: dict[str, _Topic] = {}
        self._listener: PgListener | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def watch(
        self,
        topic: str,
        reload: Callable[[], Awaitable[None]],
        version: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        """Call `reload()` when `topic` changes; poll `version()` as the fallback.

        The first load runs at once (in the background): it reads the version before it
        loads, so a change made at any moment after `watch()` is seen by a notice or a poll."""
        self._topics[topic] = _Topic(reload, version)
        self.notice(topic)

    def unwatch(self, topic: str) -> None:
        """Stop watching `topic`."""
        watched = self._topics.pop(topic, None)
        if watched is not None and watched.task is not None:
            watched.task.cancel()

    async def start(self, *, redis: Any = None, scope: str = "") -> None:
        """Listen (PostgreSQL), subscribe (Redis, channel per deployment `scope`) and poll."""
        self.redis = redis
        self.redis_channel = f"{CHANNEL}:{scope}" if scope else CHANNEL
        _watchers.add(self)
        if self.db.dialect == "postgresql":
            self._listener = PgListener(
                self.db.url,
                (CHANNEL,),
                lambda _channel, topic: self.notice(topic),
                on_reconnect=self.notice_all,
            )
            await self._listener.start()
        if redis is not None:
            self._tasks.append(asyncio.create_task(self._subscribe(), name="keel-changes-redis"))
        self._tasks.append(asyncio.create_task(self._poll(), name="keel-changes-poll"))

    async def stop(self) -> None:
        """Stop every task and connection."""
        _watchers.discard(self)
        for task in self._tasks:
            task.cancel()
        for watched in self._topics.values():
            if watched.task is not None:
                watched.task.cancel()
        for task in [*self._tasks, *(w.task for w in self._topics.values() if w.task)]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None

    @property
    def listener(self) -> PgListener | None:
        """The PostgreSQL listener, if any."""
        return self._listener

    def notice(self, topic: str) -> None:
        """`topic` changed: reload it (once more if a reload is already running)."""
        watched = self._topics.get(topic)
        if watched is None:
            return
        watched.dirty = True
        if watched.task is None or watched.task.done():
            watched.task = asyncio.create_task(self._reload(watched), name=f"keel-reload-{topic}")

    def notice_all(self) -> None:
        """Every topic may have changed (notices were missed)."""
        for topic in list(self._topics):
            self.notice(topic)

    async def _reload(self, watched: _Topic) -> None:
        while watched.dirty:
            watched.dirty = False
            try:
                if watched.version is not None:
                    watched.last_version = await watched.version()
                await watched.reload()
                watched.failures = 0
            except Exception as exc:  # noqa: BLE001 - retried at the next notice or poll
                watched.failures += 1
                watched.last_version = _FAILED  # the next poll retries
                if watched.failures in (1, 10) or watched.failures % 100 == 0:
                    _logger.warning("reload failed", error=str(exc), failures=watched.failures)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            for topic, watched in list(self._topics.items()):
                if watched.version is None or (
                    watched.task is not None and not watched.task.done()
                ):
                    continue
                try:
                    current = await watched.version()
                except Exception as exc:  # noqa: BLE001 - keep polling through outages
                    _logger.debug("version poll failed", topic=topic, error=str(exc))
                    continue
                if current != watched.last_version:
                    self.notice(topic)

    async def _subscribe(self) -> None:
        first = True
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.redis_channel)
                if not first:
                    self.notice_all()
                first = False
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message.get("data")
                        self.notice(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - polling covers the gap
                _logger.warning("change subscription lost", error=str(exc))
                first = False
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
