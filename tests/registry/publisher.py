"""Another Keel process for the cache tests: `python -m tests.registry.publisher NAME SQL`
starts a kernel from the KEEL_* variables, adds a draft of the deployment-wide sql_query
asset NAME with SQL, publishes it, prints `committed <unix time>` right after the commit
and stops (after its change notice went out)."""

from __future__ import annotations

import asyncio
import sys
import time

from keel import Config, Keel
from keel.audit import bind_actor, system_actor
from keel.registry import service


async def main(name: str, sql: str) -> None:
    """Publish `sql` as the next version of `name` from this process's own kernel."""
    keel = Keel(Config(), modules=())
    await keel.startup()
    try:
        bind_actor(system_actor("publisher"))
        async with keel.db.transaction() as session:
            asset = await service.find_asset(session, "sql_query", name, tenant_id=None, lock=True)
            version = await service.add_draft(session, asset, {"sql": sql})
            await service.validate(session, asset, version.number)
            await service.publish(session, asset, version.number, reason="from another process")
        # The moment of the commit (wall clock, comparable across processes): the test
        # measures the notice's delay from here, not from this process's exit.
        print(f"committed {time.time():.6f}", flush=True)
        await asyncio.sleep(0.5)  # the Redis publish runs in the background after the commit
    finally:
        await keel.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
