"""A second Keel process for the propagation tests and `bench/settings.py`.

Run as `python -m tests.settings.watcher` with KEEL_* variables naming the shared database
(and Redis). It declares `prop.value` (int, default 0), starts a kernel, prints `ready`, then
prints `seen <value> <unix time>` each time the handle's value changes (checked every 2 ms,
reading the handle as any code would) until the value is negative.
"""

from __future__ import annotations

import asyncio
import time

from keel import Config, Keel, settings

KEY = "prop.value"


async def main() -> None:
    """Watch the setting until it turns negative."""
    handle = settings.declare(KEY, int, default=0)
    keel = Keel(Config(), modules=[])
    await keel.startup()
    try:
        print("ready", flush=True)
        last = handle.value
        while last >= 0:
            value = handle.value
            if value != last:
                print(f"seen {value} {time.time():.6f}", flush=True)
                last = value
            await asyncio.sleep(0.002)
    finally:
        await keel.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
