"""Fuzzing every operation of the OpenAPI document: no input makes Keel answer 5xx."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings

from keel import Config, create_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Keel on SQLite under a real uvicorn on a free loopback port."""
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    # Limits off: the fuzzer sends thousands of requests from one address.
    app = create_app(Config(data_dir=data_dir, rate_limit_enabled=False), configure_logs=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_no_generated_request_gets_a_server_error(served: str) -> None:
    """Schema-driven random requests (bodies, paths, queries) never produce a 5xx."""
    schema = schemathesis.openapi.from_url(f"{served}/api/v1/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def exercise(case: schemathesis.Case) -> None:
            response = case.call(base_url=served)
            if response.status_code >= 500:
                label = case.operation.label
                failures.append(f"{label}: {response.status_code} {response.text[:120]}")

        exercise()
    assert failures == []
