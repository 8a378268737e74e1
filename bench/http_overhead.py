"""HTTP overhead of Keel's full middleware stack versus a bare FastAPI app.

Measures requests/s and p50/p99 latency of `GET /bench` (returning `{"ok": true}`) served by
`_apps.keel` (create_app: trace, guard, errors and metrics middleware, JSON logs, SQLite) and by
`_apps.bare` (plain FastAPI). Each app runs in its own uvicorn subprocess with identical settings
(1 worker, uvloop, httptools, log level info) on 127.0.0.1; load comes from a separate process:
`wrk --latency` when installed, else a multi-process asyncio HTTP/1.1 keep-alive client.

Two modes by default: access log ON (bare: uvicorn's access log; Keel: its own JSON line, with
uvicorn's disabled by Keel) and OFF (both `--no-access-log`; Keel `access_log=False`). Per mode
both servers start once, get one warm-up, then are loaded alternately (bare, keel, bare, keel,
...) for `--rounds` rounds; the table shows every round, the median per app and the keel/bare
ratios of the medians. Server output goes to log files in a temp dir; KEEL_* variables are
removed from the servers' environment. Everything stops by itself (~2 minutes by default).

    python bench/http_overhead.py [--rounds 3] [--duration 8] [--no-access-log] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
APPS = ("bare", "keel")
TARGET_THROUGHPUT_RATIO = 0.75
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass
class Sample:
    """One measured load run against one server."""

    app: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


class Server:
    """One uvicorn subprocess serving `_apps.<app>` on a free loopback port."""

    def __init__(self, app: str, access_log: bool, workdir: Path) -> None:
        self.app, self.access_log = app, access_log
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.log_path = workdir / f"{app}-{'log' if access_log else 'nolog'}.log"
        self.data_dir = workdir / f"keel-data-{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bench"

    def start(self, timeout: float = 30.0) -> None:
        """Start uvicorn and wait until `/bench` answers 200."""
        cmd = [sys.executable, "-m", "uvicorn", f"_apps:{self.app}", "--factory"]
        cmd += ["--app-dir", str(BENCH_DIR), "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--workers", "1", "--loop", "uvloop", "--http", "httptools"]
        cmd += ["--no-server-header", "--log-level", "info"]
        if not self.access_log:
            cmd.append("--no-access-log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
        env["BENCH_KEEL_DATA_DIR"] = str(self.data_dir)
        env["BENCH_ACCESS_LOG"] = "1" if self.access_log else "0"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url, timeout=1) as resp,  # noqa: S310
            ):
                if resp.status == 200:
                    return
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.app} server did not become ready:\n{tail}")

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


# --- load generators ---------------------------------------------------------------------
def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unparseable wrk time {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def run_wrk(url: str, threads: int, conns: int, seconds: float) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) from one `wrk --latency` run."""
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--latency", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30)
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", text, re.M)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", text, re.M)[1])  # type: ignore[index]
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|timeout):? (\d+)", text))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write) (\d+)", text))
    return rps, p50, p99, errors


async def _client(port: int, deadline: float, latencies: list[float]) -> int:
    request = f"GET /bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    try:
        while (started := time.perf_counter()) < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await reader.readexactly(int(length[1]) if length else 0)
            latencies.append(time.perf_counter() - started)
            errors += head[9:12] != b"200"
    finally:
        writer.close()
    return errors


async def _load(port: int, conns: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    results = await asyncio.gather(*(_client(port, deadline, latencies) for _ in range(conns)))
    return latencies, sum(results)


def _load_process(port: int, conns: int, seconds: float) -> tuple[list[float], int]:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()  # type: ignore[attr-defined, unused-ignore]
    return asyncio.run(_load(port, conns, seconds))


def run_python(url: str, procs: int, conns: int, seconds: float) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) from the pure-Python fallback load generator."""
    port = urlsplit(url).port or 80
    shares = [conns // procs + (i < conns % procs) for i in range(procs)]
    with ProcessPoolExecutor(procs) as pool:
        futures = [pool.submit(_load_process, port, n, seconds) for n in shares if n]
        parts = [f.result(timeout=seconds + 30) for f in futures]
    lat = sorted(x for part, _ in parts for x in part)
    errors = sum(err for _, err in parts)
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
    return len(lat) / seconds, pick(0.50), pick(0.99), errors


# --- driver ------------------------------------------------------------------------------
def measure_mode(args: argparse.Namespace, access_log: bool, workdir: Path) -> list[Sample]:
    """Start both servers, warm them up, then load them alternately for `args.rounds`."""
    load = run_wrk if args.loadgen == "wrk" else run_python
    servers = {app: Server(app, access_log, workdir) for app in APPS}
    samples: list[Sample] = []
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            load(server.url, args.threads, args.connections, args.warmup)
        for rnd in range(1, args.rounds + 1):
            for app, server in servers.items():
                rps, p50, p99, errors = load(
                    server.url, args.threads, args.connections, args.duration
                )
                samples.append(Sample(app, rnd, rps, p50, p99, errors))
                print(f"  {app:4} round {rnd}: {rps:9.1f} req/s", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    return samples


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Median per app and keel/bare ratios of the medians."""
    med = {
        app: {
            key: statistics.median(getattr(s, key) for s in samples if s.app == app)
            for key in ("rps", "p50_ms", "p99_ms")
        }
        for app in APPS
    }
    ratio = {key: med["keel"][key] / med["bare"][key] for key in med["keel"]}
    return {"samples": [asdict(s) for s in samples], "median": med, "ratio": ratio}


def print_table(title: str, result: dict[str, Any]) -> None:
    print(f"\n{title}")
    print(f"  {'run':<12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for s in result["samples"]:
        row = f"  {s['app'] + ' #' + str(s['round']):<12}{s['rps']:>10.1f}"
        print(f"{row}{s['p50_ms']:>10.2f}{s['p99_ms']:>10.2f}{s['errors']:>8}")
    for app, m in result["median"].items():
        print(f"  {app + ' median':<12}{m['rps']:>10.1f}{m['p50_ms']:>10.2f}{m['p99_ms']:>10.2f}")
    r = result["ratio"]
    verdict = "meets" if r["rps"] >= TARGET_THROUGHPUT_RATIO else "BELOW"
    print(f"  {'keel/bare':<12}{r['rps']:>10.3f}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}")
    print(f"  throughput ratio {r['rps']:.3f} {verdict} target >= {TARGET_THROUGHPUT_RATIO}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per app and mode")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per server")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads / client processes")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-access-log", action="store_true", help="only the log-OFF mode")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server log dir")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    if args.loadgen == "wrk":
        probe = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        loadgen = (probe.stdout + probe.stderr).splitlines()[0].split(" Copyright")[0]
    else:
        loadgen = f"python asyncio client ({args.threads} process(es))"
    # Run the `finally` clean-ups on SIGTERM, and on Ctrl-C even if started with SIGINT ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)

    modes = {"access_log_off": False} if args.no_access_log else {}
    modes = modes or {"access_log_on": True, "access_log_off": False}
    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    results: dict[str, Any] = {}
    try:
        for name, access_log in modes.items():
            print(f"{name}: measuring ...", file=sys.stderr)
            results[name] = summarize(measure_mode(args, access_log, workdir))
    finally:
        if args.keep_logs:
            print(f"server logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    packages = ("keel-server", "fastapi", "starlette", "uvicorn", "uvloop", "httptools")
    settings = {
        "loadgen": loadgen,
        "python": sys.version.split()[0],
        "versions": {pkg: version(pkg) for pkg in packages},
        "cpus": os.cpu_count(),
        **{k: v for k, v in vars(args).items() if k not in ("json", "keep_logs", "loadgen")},
    }
    if args.json:
        print(json.dumps({"settings": settings, "modes": results}, indent=2))
        return 0
    print(f"GET /bench  keel vs bare FastAPI  |  load: {loadgen}")
    print(f"  -t{args.threads} -c{args.connections}, {args.duration:g}s x {args.rounds} rounds")
    print("  " + ", ".join(f"{k} {v}" for k, v in settings["versions"].items()))
    print(f"  python {settings['python']}, {settings['cpus']} CPUs, uvicorn 1 worker")
    titles = {
        "access_log_on": "access log ON (bare: uvicorn access log; keel: Keel JSON line)",
        "access_log_off": "access log OFF (both)",
    }
    for name, result in results.items():
        print_table(titles[name], result)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
