"""HTTP load machinery shared by `http_overhead.py` and `auth.py`: the servers and the clients.

- `Server`: one uvicorn subprocess (1 worker, uvloop, httptools, log level info, no server
  header) serving an app factory of this directory (`--factory`, `--app-dir bench/`) on a free
  port of 127.0.0.1, its output in a log file. Its environment loses `KEEL_*` variables and
  gets `BENCH_KEEL_DATA_DIR` and `BENCH_ACCESS_LOG` (read by `_apps.py` and `_auth_apps.py`)
  plus whatever the benchmark adds. `start()` returns once the server's path answers 200;
  `stop()` terminates it (kills it 5 s later).
- `run_wrk`: one `wrk --latency` run (extra headers with `-H`): requests/s, p50 and p99 latency
  and errors (non-2xx/3xx answers, timeouts, socket errors) parsed from its output.
- `run_python`: the fallback when `wrk` is missing, with the same signature and result: an
  asyncio HTTP/1.1 keep-alive client (uvloop if installed) in `procs` processes sharing `conns`
  connections, each sending `GET <path>` with the given headers back to back until the time is
  up; answers other than 200 count as errors. Slower than `wrk`, it can become the bottleneck.
- `resolve_loadgen` (`--loadgen auto` becomes `wrk` when installed, else `python`) and
  `loadgen_label` (what the output's header says: `wrk`'s version, or the client's processes).
- `get` (one request with urllib: status and lower-cased headers), `exchange` (one request on a
  keep-alive connection: status and body) and `pick` (a percentile of sorted values).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


# --- servers -------------------------------------------------------------------------------
class Server:
    """One uvicorn subprocess serving the app factory `factory` (`module:function` of bench/)
    on a free loopback port.

    `path` is the route `url()` points to by default and `start()` waits for. Keel's data
    directory is `data_dir`, by default `keel-data-<port>` in `workdir`; the log file is
    `<log_name or name>.log` in `workdir`. `env` is added to the server's environment (after
    the `KEEL_*` variables are removed) and `cwd` is its working directory (default: ours).
    """

    def __init__(
        self,
        name: str,
        factory: str,
        *,
        path: str,
        access_log: bool,
        workdir: Path,
        data_dir: Path | None = None,
        log_name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name, self.factory, self.path, self.access_log = name, factory, path, access_log
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.log_path = workdir / f"{log_name or name}.log"
        self.data_dir = data_dir or workdir / f"keel-data-{self.port}"
        self.env = dict(env or {})
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def url(self, path: str | None = None) -> str:
        return f"http://127.0.0.1:{self.port}{self.path if path is None else path}"

    def start(self, timeout: float = 30.0) -> None:
        """Start uvicorn and wait until `url()` answers 200."""
        cmd = [sys.executable, "-m", "uvicorn", self.factory, "--factory"]
        cmd += ["--app-dir", str(BENCH_DIR), "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--workers", "1", "--loop", "uvloop", "--http", "httptools"]
        cmd += ["--no-server-header", "--log-level", "info"]
        if not self.access_log:
            cmd.append("--no-access-log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        env.update(self.env)
        env["BENCH_KEEL_DATA_DIR"] = str(self.data_dir)
        env["BENCH_ACCESS_LOG"] = "1" if self.access_log else "0"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                if get(self.url())[0] == 200:
                    return
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} server did not become ready:\n{tail}")

    def stop(self) -> None:
        """Terminate, then kill after a timeout."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """One GET with urllib: the status (also of an error answer) and lower-cased headers."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:  # noqa: S310
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


# --- load generators -----------------------------------------------------------------------
def loadgen_label(loadgen: str, threads: int) -> str:
    """What the output's header calls the load generator: `wrk`'s version line, or the client."""
    if loadgen == "wrk":
        probe = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        return (probe.stdout + probe.stderr).splitlines()[0].split(" Copyright")[0]
    return f"python asyncio client ({threads} process(es))"


def resolve_loadgen(choice: str) -> str:
    """`wrk` or `python` for `--loadgen auto|wrk|python` (auto: `wrk` when installed)."""
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    return choice


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unparseable wrk time {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def run_wrk(
    url: str, threads: int, conns: int, seconds: float, headers: Mapping[str, str] | None = None
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) from one `wrk --latency` run."""
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--latency"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, check=True, timeout=seconds + 30
    )
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", text, re.M)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", text, re.M)[1])  # type: ignore[index]
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|timeout):? (\d+)", text))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write) (\d+)", text))
    return rps, p50, p99, errors


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[bytes, bytes]:
    """Send one request on a keep-alive connection: the response's status code and body."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    body = await reader.readexactly(int(length[1]) if length else 0)
    return head[9:12], body


async def _client(port: int, request: bytes, deadline: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    try:
        while (started := time.perf_counter()) < deadline:
            status, _ = await exchange(reader, writer, request)
            latencies.append(time.perf_counter() - started)
            errors += status != b"200"
    finally:
        writer.close()
    return errors


async def _load(port: int, request: bytes, conns: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    clients = (_client(port, request, deadline, latencies) for _ in range(conns))
    return latencies, sum(await asyncio.gather(*clients))


def _load_process(port: int, request: bytes, conns: int, seconds: float) -> tuple[list[float], int]:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()  # type: ignore[attr-defined, unused-ignore]
    return asyncio.run(_load(port, request, conns, seconds))


def run_python(
    url: str, procs: int, conns: int, seconds: float, headers: Mapping[str, str] | None = None
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) from the pure-Python fallback load generator."""
    parts_of_url = urlsplit(url)
    port = parts_of_url.port or 80
    lines = [f"GET {parts_of_url.path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    shares = [conns // procs + (i < conns % procs) for i in range(procs)]
    with ProcessPoolExecutor(procs) as pool:
        futures = [pool.submit(_load_process, port, request, n, seconds) for n in shares if n]
        parts = [f.result(timeout=seconds + 30) for f in futures]
    lat = sorted(x for part, _ in parts for x in part)
    errors = sum(err for _, err in parts)
    return len(lat) / seconds, pick(lat, 0.50) * 1000, pick(lat, 0.99) * 1000, errors


def pick(ordered: list[float], q: float) -> float:
    """The `q` quantile (0-1) of sorted values: the one at index `int(q * n)`; NaN if none."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
