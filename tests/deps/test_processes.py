"""Two server processes share one database and Redis: a breaker opened by calls in one
process makes the other fail fast without calling the upstream itself, and recovery closes
the breaker in both."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from keel import Config
from keel.core.database import Database
from tests.conftest import TEST_MASTER_KEY
from tests.deps.upstream import Behaviour, Upstream
from tests.test_serve import free_port, keel_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.redis]

OPEN_FOR = 3.0
UPSTREAM_DELAY = 0.8  # every failing answer takes this long


def _spawn(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:  # the child keeps its own copy of the file
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "tests.deps.serving:create",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def _output(logs: Path) -> str:
    return "\n".join(path.read_text()[-2000:] for path in sorted(logs.glob("server-*.log")))


@asynccontextmanager
async def _servers(
    env: dict[str, str], count: int, logs: Path
) -> AsyncIterator[list[Callable[[str], str]]]:
    """`count` uvicorn processes serving tests.deps.serving, up until the block ends; always
    stopped (SIGTERM, then SIGKILL) by pid."""
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[Callable[[str], str]] = []
    try:
        for n in range(count):
            port = free_port()
            processes.append(_spawn(env, port, logs / f"server-{n}.log"))
            urls.append(lambda path, port=port: f"http://127.0.0.1:{port}{path}")
        async with httpx.AsyncClient(timeout=2) as client:
            for process, url in zip(processes, urls, strict=True):
                deadline = time.monotonic() + 40
                while True:
                    if process.poll() is not None:
                        pytest.fail(
                            f"a server exited early ({process.returncode}):\n" + _output(logs)
                        )
                    try:
                        if (await client.get(url("/readyz"))).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "a server did not come up in time"
                    await asyncio.sleep(0.1)
        yield urls
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


async def test_a_breaker_opened_in_one_process_makes_the_other_fail_fast(
    migrated_db: Database, config: Config, upstream: Upstream, redis_url: str, tmp_path: Path
) -> None:
    """Process A calls a failing, slow upstream until its breaker opens; process B, which has
    made no call, then answers 503 problem+json with Retry-After at once and without calling
    the upstream. Once the upstream recovers and the breaker's open time has passed, a call
    through A closes the breaker and both processes call the upstream again."""
    name = f"shared-{uuid.uuid4().hex[:10]}"  # keys of its own in the shared Redis database
    env = keel_env(
        KEEL_DATABASE_URL=config.effective_database_url,
        KEEL_DATA_DIR=str(tmp_path / "data"),
        KEEL_MASTER_KEY=TEST_MASTER_KEY,
        KEEL_REDIS_URL=redis_url,
        KEEL_AUTO_MIGRATE="false",
        KEEL_WORKER_IN_PROCESS="false",
        KEEL_LOG_LEVEL="warning",
        KEEL_CONFIG_FILE=str(tmp_path / "absent.toml"),
        TEST_DEP_NAME=name,
        TEST_UPSTREAM_URL=upstream.url,
        TEST_OPEN_FOR=str(OPEN_FOR),
    )
    upstream.default = Behaviour(status=503, delay=UPSTREAM_DELAY)
    try:
        async with _servers(env, 2, tmp_path) as (a, b), httpx.AsyncClient(timeout=10) as http:
            # A: two failing calls (the upstream's own 503, after its delay) open the breaker.
            for _ in range(2):
                answer = await http.get(a("/call"))
                assert answer.json() == {"upstream_status": 503}
            assert len(upstream.hits) == 2
            opened = await http.get(a("/call"))
            assert opened.status_code == 503
            assert opened.headers["content-type"].startswith("application/problem+json")
            assert (await http.get(a("/breaker"))).json()["state"] == "open"
            assert len(upstream.hits) == 2, "an open breaker does not call the upstream"

            # B has made no call; its first one fails fast, without reaching the upstream.
            assert (await http.get(b("/breaker"))).json() == {"state": "closed"}
            started = time.perf_counter()
            refused = await http.get(b("/call"))
            elapsed = time.perf_counter() - started
            assert refused.status_code == 503
            assert refused.headers["content-type"].startswith("application/problem+json")
            problem = refused.json()
            assert problem["status"] == 503 and problem["type"].endswith("dependency-unavailable")
            assert 1 <= int(refused.headers["retry-after"]) <= OPEN_FOR
            assert elapsed < UPSTREAM_DELAY / 2, f"B took {elapsed:.3f} s to refuse"
            assert len(upstream.hits) == 2, "B never called the upstream"
            shown = (await http.get(b("/breaker"))).json()
            assert shown["state"] == "open" and shown["recent_failures"] == 0

            # Recovery: after the open time, A's trial call succeeds and closes the breaker.
            upstream.default = Behaviour()
            deadline = time.monotonic() + OPEN_FOR + 10
            while (answer := await http.get(a("/call"))).status_code != 200:
                assert answer.status_code == 503
                assert time.monotonic() < deadline, "A's breaker never let a trial call through"
                await asyncio.sleep(0.2)
            assert answer.json() == {"upstream_status": 200}
            assert (await http.get(a("/breaker"))).json()["state"] == "closed"
            assert (await http.get(b("/call"))).json() == {"upstream_status": 200}
            assert (await http.get(b("/breaker"))).json()["state"] == "closed"
    finally:
        import redis.asyncio as redis_asyncio

        cleanup = redis_asyncio.from_url(redis_url)
        try:
            await cleanup.delete(
                f"keel:deps:breaker:{name}:open", f"keel:deps:breaker:{name}:failures"
            )
        finally:
            await cleanup.aclose()
