"""What every Keel process sets up, with or without a kernel (`keel serve`, an application,
a standalone `keel worker`): the deployment's instance record and the Redis client."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from keel._version import __version__
from keel.core.database import Database
from keel.core.errors import StartupError
from keel.core.ids import new_id
from keel.core.models import Instance

__all__ = ["connect_redis", "ensure_instance", "redis_asyncio"]


async def ensure_instance(db: Database) -> str:
    """This deployment's id, created by whichever process starts first."""
    for _attempt in range(3):
        try:
            async with db.transaction() as session:
                instance = await session.scalar(select(Instance))
                if instance is None:
                    instance = Instance(
                        id=new_id(), created_at=datetime.now(UTC), created_by_version=__version__
                    )
                    session.add(instance)
                return instance.id
        except IntegrityError:
            continue  # another process created it first: read theirs
    raise StartupError("could not create the instance record", hint="run `keel doctor`")


def redis_asyncio() -> Any:
    """The `redis.asyncio` module, or a StartupError saying how to install it."""
    try:
        import redis.asyncio as module
    except ModuleNotFoundError:
        raise StartupError(
            "KEEL_REDIS_URL is set but the redis client is not installed",
            hint="pip install 'keel-server[redis]'",
        ) from None
    return module


def connect_redis(url: str) -> Any:
    """A Redis client for `url` (short timeouts: Redis is never allowed to hang a request)."""
    return redis_asyncio().from_url(url, socket_connect_timeout=2, socket_timeout=2)
