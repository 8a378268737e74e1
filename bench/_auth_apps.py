"""The Keel application `auth.py` measures, as a uvicorn factory (`--factory`), and the pieces
the benchmark shares with it in-process (configuration and the bench module).

One tiny public route, `GET /api/v1/bench/ping` → `{"ok": true}`, added by a `KeelModule`, so it
sits under `/api/` (counted by the default rate limit) behind Keel's full middleware stack. It is
public (`Depends(public)`), so an anonymous request and one carrying a bearer token reach the
same handler; the identity middleware still verifies the token and the rate limiter still counts.

The server reads its settings from the environment the benchmark sets for the subprocess:

- `BENCH_KEEL_DATA_DIR`: Keel's data directory (SQLite database and master key), shared with
  the in-process set-up that created the users and signed the bench token.
- `BENCH_RATE_LIMITS`: `1` for limits on (rates high enough never to trip), `0` for off.
- `BENCH_ACCESS_LOG`: `1` (default) for Keel's per-request JSON line, `0` for none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, FastAPI

if TYPE_CHECKING:
    from keel import Config, Keel
    from keel.core.modules import KeelModule

PING_PATH = "/api/v1/bench/ping"
RATE_DEFAULT = "100000000/minute"
"""High enough that the benchmark never trips it, low enough to be counted."""
RATE_LOGIN = "100000/minute"


def bench_config(
    data_dir: str | Path, *, rate_limits: bool, access_log: bool = True, log_level: str = "info"
) -> Config:
    """The configuration both servers (and the in-process kernel) use; only the limits differ."""
    from keel import Config

    return Config(
        data_dir=data_dir,
        log_format="json",
        log_level=log_level,
        access_log=access_log,
        rate_limit_enabled=rate_limits,
        rate_limit_default=RATE_DEFAULT,
        rate_limit_login=RATE_LOGIN,
    )


def bench_module() -> KeelModule:
    """A module contributing `GET /api/v1/bench/ping`, public."""
    from keel.core.guards import public
    from keel.core.modules import KeelModule

    def router(_keel: Keel) -> APIRouter:
        api = APIRouter(prefix="/api/v1/bench")

        @api.get("/ping", dependencies=[Depends(public)])
        async def ping() -> dict[str, bool]:
            return {"ok": True}

        return api

    return KeelModule(name="bench", routers=(router,))


def keel_auth() -> FastAPI:
    """Keel's full kernel with the bench module, limits on or off as the environment says."""
    from keel import create_app

    config = bench_config(
        os.environ["BENCH_KEEL_DATA_DIR"],
        rate_limits=os.environ.get("BENCH_RATE_LIMITS", "1") != "0",
        access_log=os.environ.get("BENCH_ACCESS_LOG", "1") != "0",
    )
    return create_app(config, modules=[bench_module()])
