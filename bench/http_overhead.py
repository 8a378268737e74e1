"""HTTP overhead of Keel's full middleware stack versus a bare FastAPI app.

Measures requests/s and p50/p99 latency of `GET /bench` (returning `{"ok": true}`) served by
`_apps.keel` (create_app: trace, guard, errors and metrics middleware, JSON logs, SQLite) and by
`_apps.bare` (plain FastAPI). Each app runs in its own uvicorn subprocess with identical settings
(1 worker, uvloop, httptools, log level info) on 127.0.0.1; load comes from a separate process:
`wrk --latency` when installed, else a multi-process asyncio HTTP/1.1 keep-alive client (the
servers and both load generators are in `_http_load.py`, shared with `auth.py`).

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
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _http_load import (  # noqa: E402
    Server,
    loadgen_label,
    resolve_loadgen,
    run_python,
    run_wrk,
)

APPS = ("bare", "keel")
TARGET_THROUGHPUT_RATIO = 0.75


@dataclass
class Sample:
    """One measured load run against one server."""

    app: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


# --- driver ------------------------------------------------------------------------------
def _server(app: str, access_log: bool, workdir: Path) -> Server:
    """The server of `_apps.<app>` (`GET /bench`), with a Keel data dir of its own."""
    log_name = f"{app}-{'log' if access_log else 'nolog'}"
    return Server(
        app,
        f"_apps:{app}",
        path="/bench",
        access_log=access_log,
        workdir=workdir,
        log_name=log_name,
    )


def measure_mode(args: argparse.Namespace, access_log: bool, workdir: Path) -> list[Sample]:
    """Start both servers, warm them up, then load them alternately for `args.rounds`."""
    load = run_wrk if args.loadgen == "wrk" else run_python
    servers = {app: _server(app, access_log, workdir) for app in APPS}
    samples: list[Sample] = []
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            load(server.url(), args.threads, args.connections, args.warmup)
        for rnd in range(1, args.rounds + 1):
            for app, server in servers.items():
                rps, p50, p99, errors = load(
                    server.url(), args.threads, args.connections, args.duration
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
    args.loadgen = resolve_loadgen(args.loadgen)
    loadgen = loadgen_label(args.loadgen, args.threads)
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
