"""Work a command-line command does as the `system:cli` actor: on a database of its own,
migrated when allowed, its audit events sealed before it returns (no server may be running
to seal them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.chain import seal_all
from keel.audit.context import bind_actor, reset_actor, system_actor
from keel.core.config import Config
from keel.core.database import Database
from keel.core.migrate import prepare

__all__ = ["as_cli", "in_cli_transaction"]

T = TypeVar("T")


async def as_cli(
    config: Config, work: Callable[[Database], Awaitable[T]], *, seal: bool = True
) -> T:
    """Run `work(db)` as `system:cli`, then seal what it recorded (unless `seal=False`)."""
    db = Database(config)
    token = bind_actor(system_actor("cli"))
    try:
        await prepare(db, auto_migrate=config.should_auto_migrate)
        result = await work(db)
        if seal:
            await seal_all(db)
        return result
    finally:
        reset_actor(token)
        await db.dispose()


async def in_cli_transaction(config: Config, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """`as_cli` with `work` run in one transaction."""

    async def transaction(db: Database) -> T:
        async with db.transaction() as session:
            return await work(session)

    return await as_cli(config, transaction)
