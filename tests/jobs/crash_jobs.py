"""Job kinds for the crash test, importable by the worker subprocesses it kills."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table

from keel.jobs import JobContext, job

LEDGER = Table(
    "crash_ledger",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36)),
    Column("attempt", Integer),
)


@job("crash.ledger", max_attempts=1000)
async def write_ledger(ctx: JobContext, n: int) -> int:
    """Work a little, record the effect exactly once, work a little more."""
    await asyncio.sleep(random.uniform(0.01, 0.08))

    async def effect(session: Any) -> None:
        await session.execute(LEDGER.insert().values(job_id=ctx.job_id, attempt=ctx.attempt))

    await ctx.once("ledger", effect)
    await asyncio.sleep(random.uniform(0.0, 0.05))
    return n


@job("crash.slow", max_attempts=10)
async def slow(ctx: JobContext, seconds: float) -> str:
    """Long enough to be killed in the middle."""
    for step in range(int(seconds * 10)):
        ctx.progress(step, seconds * 10)
        await asyncio.sleep(0.1)
    return "finished"
