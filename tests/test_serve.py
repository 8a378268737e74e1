"""`keel serve` as a real process: starts, answers over HTTP, stops cleanly on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_MASTER_KEY

pytestmark = pytest.mark.slow


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def keel_env(**extra: str) -> dict[str, str]:
    """The environment for a child `keel` without the parent's KEEL_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(extra)
    return env


def wait_until_up(process: subprocess.Popen[str], url: str, timeout: float = 20) -> None:
    """Poll `url` until it answers; fail with the child's output if it dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"keel serve exited early ({process.returncode}):\n{output}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail("keel serve did not come up in time")


@contextlib.contextmanager
def running_serve(
    cwd: Path, env: dict[str, str], probe: str = "/healthz"
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`keel serve` on a free port in `cwd`, up (answering `probe`) until the block ends;
    killed then if the block did not stop it."""
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "keel", "serve", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        try:
            wait_until_up(process, f"http://127.0.0.1:{port}{probe}")
            yield process, port
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`keel serve` on a free port in an empty directory (the quick start)."""
    with running_serve(tmp_path, keel_env(KEEL_SHUTDOWN_GRACE="5")) as running:
        yield running


def test_serve_starts_answers_and_stops_on_sigterm(
    serve: tuple[subprocess.Popen[str], int], tmp_path: Path
) -> None:
    """The quick start: SQLite created and migrated in ./.keel, ready, SIGTERM exits 0."""
    process, port = serve
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
    assert "Keel is running" in httpx.get(f"{base}/").text
    assert (tmp_path / ".keel" / "keel.db").exists()
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    output = process.stdout.read() if process.stdout else ""
    assert '"event":"keel stopped"' in output


def test_in_flight_request_finishes_after_sigint(
    serve: tuple[subprocess.Popen[str], int],
) -> None:
    """A response being read when Ctrl-C arrives is delivered whole before the exit."""
    process, port = serve
    path = "/static/vendor/swagger-ui/swagger-ui-bundle.js"
    expected = int(httpx.head(f"http://127.0.0.1:{port}{path}").headers["content-length"])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        received = sock.recv(4096)
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        sock.settimeout(5)
        while chunk := sock.recv(65536):
            received += chunk
            if len(received.partition(b"\r\n\r\n")[2]) >= expected:
                break
    assert len(received.partition(b"\r\n\r\n")[2]) == expected
    assert process.wait(timeout=10) == 0


def test_serve_refuses_unmigrated_postgres(postgres_url: str, tmp_path: Path) -> None:
    """On PostgreSQL without a master key, or on an empty database, serve exits 1 with a
    one-line hint; with the key and after `keel db upgrade` it starts."""
    env = keel_env(KEEL_DATABASE_URL=postgres_url)
    port = free_port()
    keyless = subprocess.run(
        [sys.executable, "-m", "keel", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert keyless.returncode == 1
    assert "keel: error: no master key" in keyless.stderr
    assert "Traceback" not in keyless.stderr + keyless.stdout
    env["KEEL_MASTER_KEY"] = TEST_MASTER_KEY
    refused = subprocess.run(
        [sys.executable, "-m", "keel", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert "keel: error: the database is not migrated" in refused.stderr
    assert "keel db upgrade" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    upgraded = subprocess.run(
        [sys.executable, "-m", "keel", "db", "upgrade"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    with running_serve(tmp_path, env, probe="/readyz") as (process, _port):
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_first_start_prints_a_setup_link_kept_out_of_logs(tmp_path: Path) -> None:
    """With no users, serve prints a one-time setup link to the terminal (never into a log
    line); once an account exists it prints none."""

    def start_and_stop() -> str:
        with running_serve(tmp_path, keel_env()) as (process, _port):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
            return process.stdout.read() if process.stdout else ""

    output = start_and_stop()
    links = [line.strip() for line in output.splitlines() if "/setup#token=" in line]
    assert len(links) == 1, output
    token = links[0].split("#token=")[1]
    assert not any(token in line for line in output.splitlines() if line.startswith("{"))
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "keel",
            "user",
            "create",
            "--email",
            "o@example.com",
            "--password-stdin",
        ],
        cwd=tmp_path,
        env=keel_env(),
        input="correct horse battery staple\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    assert "/setup#token=" not in start_and_stop()


def test_port_in_use_is_one_line_before_anything_happens(tmp_path: Path) -> None:
    """A taken port fails at once with a hint; nothing is migrated and no setup link issued."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "keel", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=keel_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"keel: error: 127.0.0.1:{port} is already in use" in result.stderr
    assert "--port" in result.stderr
    assert "setup#token" not in result.stderr + result.stdout
    assert not (tmp_path / ".keel").exists()
