"""The two applications `http_overhead.py` serves, as uvicorn factories (`--factory`).

Factories rather than module-level apps, so serving the bare app never imports or configures
Keel (whose `create_app` reconfigures logging process-wide). Both read their settings from the
environment the benchmark sets for the server subprocess:

- `BENCH_KEEL_DATA_DIR`: Keel's data directory (its SQLite database lives there).
- `BENCH_ACCESS_LOG`: `1` (default) for Keel's per-request JSON line, `0` for none.
"""

from __future__ import annotations

import os

from fastapi import FastAPI


def bare() -> FastAPI:
    """A plain FastAPI app with one trivial JSON endpoint."""
    app = FastAPI()

    @app.get("/bench")
    async def bench() -> dict[str, bool]:
        return {"ok": True}

    return app


def keel() -> FastAPI:
    """Keel's full kernel (all middleware, JSON logs, SQLite) with the same endpoint."""
    from keel import Config, create_app

    config = Config(
        data_dir=os.environ["BENCH_KEEL_DATA_DIR"],
        log_format="json",
        log_level="info",
        access_log=os.environ.get("BENCH_ACCESS_LOG", "1") != "0",
    )
    app = create_app(config)

    @app.get("/bench")
    async def bench() -> dict[str, bool]:
        return {"ok": True}

    return app
