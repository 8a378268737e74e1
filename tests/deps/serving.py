"""A small application built with Keel for the two-process tests: `uvicorn --factory
tests.deps.serving:create`. It declares one dependency (name and URL from `TEST_DEP_NAME` and
`TEST_UPSTREAM_URL`) and calls it on `GET /call`; `GET /breaker` shows this process's breaker."""

from __future__ import annotations

import os
from typing import Any

from fastapi import Depends, FastAPI

from keel import deps, install
from keel.core.guards import public
from keel.deps.client import runtime


def create() -> FastAPI:
    """The app; everything else (database, Redis) comes from KEEL_* variables."""
    name = os.environ["TEST_DEP_NAME"]
    deps.declare(
        name,
        base_url=os.environ["TEST_UPSTREAM_URL"],
        timeouts=deps.Timeouts(connect=2.0, read=5.0, total=5.0),
        retry=deps.Retry(attempts=1),
        breaker=deps.Breaker(
            failures=2, window=60.0, open_for=float(os.environ.get("TEST_OPEN_FOR", "4"))
        ),
    )
    app = FastAPI()
    install(app)

    @app.get("/call", dependencies=[Depends(public)])
    async def call() -> dict[str, Any]:
        response = await deps.http(name).get("/work")
        return {"upstream_status": response.status_code}

    @app.get("/breaker", dependencies=[Depends(public)])
    async def breaker() -> dict[str, Any]:
        found = runtime().breakers.get(name)
        return found.snapshot() if found is not None else {"state": "closed"}

    return app
