"""Resilient dependencies: the Keel client's per-call overhead against a bare httpx client,
and how fast a call fails while the breaker is open.

One run, on one machine: a minimal upstream (uvicorn + httptools, 1 worker) in a subprocess on
127.0.0.1 answers `GET /ok` with a small JSON body. In this process, alternating rounds of
`--calls` sequential GETs go through a bare `httpx.AsyncClient` (keep-alive) and through
`keel.deps.http(...)` (the same httpx underneath, plus timeouts, retry policy, breaker,
bulkhead, span and metrics). Latency per call: p50/p99 of each round, medians over rounds,
and the keel/bare ratio (target <= 1.2). Then the breaker is forced open and `--calls` calls
are timed until each raises `DependencyUnavailable` (target p99 < 1 ms).

    python bench/deps.py [--calls 2000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import httpx

from keel import deps
from keel.deps.client import configure, runtime

TARGET_RATIO = 1.2
TARGET_OPEN_P99_MS = 1.0
UPSTREAM = """
import uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b'{"ok":true}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", http="httptools",
            loop="uvloop", access_log=False)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _timed(calls: int, one: Any) -> list[float]:
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        await one()
        out.append((time.perf_counter() - started) * 1000)
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Start the upstream, measure against it, stop it."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM.replace("{port}", str(port))],
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(url + "/ok", timeout=0.2)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        return asyncio.run(measure(args, url))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


async def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """Both clients in alternating rounds, then the open breaker."""
    await configure()
    deps.declare("bench", base_url=url, concurrency=deps.Bulkhead(limit=100))
    keel_client = deps.http("bench")
    async with httpx.AsyncClient(base_url=url) as bare_client:

        async def bare() -> None:
            (await bare_client.get("/ok")).raise_for_status()

        async def keel() -> None:
            (await keel_client.get("/ok")).raise_for_status()

        await _timed(200, bare)
        await _timed(200, keel)
        rounds: dict[str, list[dict[str, float]]] = {"bare": [], "keel": []}
        for number in range(1, args.rounds + 1):
            for name, one in (("bare", bare), ("keel", keel)):
                times = await _timed(args.calls, one)
                sample = {
                    "p50_ms": statistics.median(times),
                    "p99_ms": _percentile(times, 0.99),
                    "mean_ms": statistics.fmean(times),
                }
                rounds[name].append(sample)
                print(
                    f"  round {number} {name:<5} p50 {sample['p50_ms']:.3f} ms  "
                    f"p99 {sample['p99_ms']:.3f} ms  mean {sample['mean_ms']:.3f} ms"
                )
    median = {
        name: {key: statistics.median(s[key] for s in samples) for key in samples[0]}
        for name, samples in rounds.items()
    }
    ratio = {key: median["keel"][key] / median["bare"][key] for key in median["bare"]}

    # Fail fast while open.
    deps.declare(
        "bench-open",
        base_url=url,
        retry=deps.Retry(attempts=1),
        breaker=deps.Breaker(failures=1, open_for=3600),
    )
    await runtime().breaker(deps.dependency("bench-open")).failed(False)
    client = deps.http("bench-open")

    async def refused() -> None:
        try:
            await client.get("/ok")
        except deps.DependencyUnavailable:
            return
        raise AssertionError("the breaker let a call through")

    await _timed(200, refused)
    open_times = await _timed(args.calls, refused)
    await runtime().close()
    return {
        "median": median,
        "ratio": ratio,
        "open": {
            "p50_ms": statistics.median(open_times),
            "p99_ms": _percentile(open_times, 0.99),
        },
    }


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nDependencies: Keel client vs bare httpx, {args.calls} calls x {args.rounds} rounds")
    for name in ("bare", "keel"):
        m = results["median"][name]
        line = f"p50 {m['p50_ms']:.3f} ms  p99 {m['p99_ms']:.3f} ms  mean {m['mean_ms']:.3f}"
        print(f"  {name:<5} {line}")
    r = results["ratio"]
    ratios = f"p50 {r['p50_ms']:.3f}  p99 {r['p99_ms']:.3f}  mean {r['mean_ms']:.3f}"
    print(f"  keel/bare latency: {ratios}")
    o = results["open"]
    print(f"  breaker open: p50 {o['p50_ms'] * 1000:.0f} µs  p99 {o['p99_ms'] * 1000:.0f} µs")
    ok_ratio = r["p50_ms"] <= TARGET_RATIO
    ok_open = o["p99_ms"] < TARGET_OPEN_P99_MS
    print("targets")
    verdict = "meets" if ok_ratio else "MISSES"
    print(f"  p50 latency ratio {r['p50_ms']:.3f} {verdict} <= {TARGET_RATIO}")
    print(
        f"  fail-fast p99 {o['p99_ms']:.3f} ms {'meets' if ok_open else 'MISSES'} "
        f"< {TARGET_OPEN_P99_MS} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (2000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per client (5)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    arguments = parser.parse_args()
    outcome = main(arguments)
    if arguments.json:
        print(json.dumps(outcome, indent=2))
    else:
        report(outcome, arguments)
