"""Cost of authentication: JWT verification, authenticated + rate-limited requests, logins.

Three measurements in one run, each against a baseline measured in the same run:

(a) JWT verification, µs per token, in-process: Keel's `TokenVerifier.verify` (the real one
    from `identity_runtime(keel).verifier` of a started kernel) versus raw PyJWT `jwt.decode`
    with the same cached Ed25519 key, audience, issuer and required claims. Keel is measured on
    a token it has never seen (signature checked; "first sight", with its claims cache empty and,
    in a second verifier of the same class sharing the kernel's keys and revocations, full as
    in steady state, where every new token evicts one) and on one it has seen before (cache hit;
    the revocation check still runs). The Ed25519 signature check alone is shown as the floor.
    Rounds alternate raw, keel, ...; the medians and keel/raw ratios are printed.
(b) Requests/s of `GET /api/v1/bench/ping` (`_auth_apps.py`, a public route under /api/) through
    uvicorn (1 worker, uvloop, httptools, log level info) with `Authorization: Bearer <token>`
    and rate limits on, versus no credential and rate limits off (the baseline), and bearer with
    limits off (identity's share of the cost). Two servers on one data directory, loaded
    alternately with `wrk --latency` (else an asyncio keep-alive client; both, and the server
    wrapper, in `_http_load.py`, shared with `http_overhead.py`); medians and ratios.
(c) Logins: `POST /api/v1/auth/token` with real users' passwords (argon2id as Keel hashes them)
    at concurrency 10, a bounded number of requests: logins/s and latency. Each connection signs
    in its own account (see `--login-accounts`).

Everything runs on 127.0.0.1 in a temp directory, is bounded in count and time (~2.5 minutes by
default, 30-45 s with `--quick`), stops by itself and stops only the servers it started.

    python bench/auth.py [--quick] [--rounds 3] [--duration 8] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _auth_apps import PING_PATH, bench_config, bench_module  # noqa: E402
from _http_load import (  # noqa: E402
    Server,
    exchange,
    get,
    loadgen_label,
    pick,
    resolve_loadgen,
    run_python,
    run_wrk,
)

TARGET_FIRST_SIGHT_RATIO = 1.3
TARGET_SEEN_US = 10.0
TARGET_THROUGHPUT_RATIO = 0.7
LOGIN_PATH = "/api/v1/auth/token"
QUICK = {
    "rounds": 2,
    "duration": 2.0,
    "warmup": 1.0,
    "verify_rounds": 3,
    "verify_tokens": 300,
    "logins": 20,
    "login_seconds": 8.0,
}
FULL = {
    "rounds": 3,
    "duration": 8.0,
    "warmup": 2.0,
    "verify_rounds": 10,
    "verify_tokens": 1000,
    "logins": 200,
    "login_seconds": 45.0,
}


# --- (a) JWT verification, in-process ------------------------------------------------------
@dataclass
class Setup:
    """What the in-process kernel prepared for the servers and measured itself."""

    token: str
    emails: list[str]
    password: str
    argon2_params: str
    argon2_verify_ms: float
    argon2_verify_cpu_ms: float
    verify: dict[str, Any]


def _claims(config: Any, user_id: str, scope: str, now: int) -> dict[str, Any]:
    # The claims Keel's own access tokens carry (tokens._access_claims), a fresh jti each.
    from keel.core.ids import new_id

    return {
        "iss": config.token_issuer,
        "aud": config.jwt_audience,
        "sub": user_id,
        "tid": None,
        "iat": now,
        "nbf": now,
        "exp": now + config.access_token_minutes * 60,
        "jti": new_id(),
        "sid": new_id(),
        "scope": scope,
    }


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


async def _measure_verify(runtime: Any, user_id: str, args: argparse.Namespace) -> dict[str, Any]:
    """µs per token for raw PyJWT, Keel first sight (cache empty / full), Keel seen before."""
    import jwt

    from keel.identity.tokens import _REQUIRED, TokenVerifier

    config = runtime.keel.config
    keys, verifier = runtime.keys, runtime.verifier
    key = keys.public[keys.current_kid]
    scope = " ".join(sorted(runtime.catalog.builtin["admin"]))
    n, rounds = args.verify_tokens, args.verify_rounds
    now = int(time.time())
    sign = keys.sign
    batches = [
        [sign(_claims(config, user_id, scope, now)) for _ in range(n)] for _ in range(rounds)
    ]
    # Same class, same keys and revocation set as the kernel's verifier; its own cache, filled
    # to capacity so that every new token evicts one, as on a server that has been up a while.
    # Filled directly (token-sized keys, the claims of a verified token): signing and verifying
    # 10,000 tokens first would add seconds and change nothing about the dictionary.
    full = TokenVerifier(
        keys,
        runtime.revocations,
        issuer=verifier.issuer,
        audience=verifier.audience,
        leeway=verifier.leeway,
        cache_size=verifier.cache_size,
    )
    seen_token = sign(_claims(config, user_id, scope, now))
    claims = await full.verify(seen_token)
    full._cache.update((f"{seen_token}.{i}", claims) for i in range(full.cache_size - 1))
    assert len(full._cache) == full.cache_size
    seen_reps = 10 * n

    algorithms = ["EdDSA"]
    options = {"require": list(_REQUIRED)}
    audience, issuer = config.jwt_audience, config.token_issuer

    def raw(tokens: list[str]) -> int:
        decode = jwt.decode
        started = time.perf_counter_ns()
        for token in tokens:
            decode(
                token,
                key,
                algorithms=algorithms,
                audience=audience,
                issuer=issuer,
                options=options,  # type: ignore[arg-type]
            )
        return time.perf_counter_ns() - started

    def floor(parts: list[tuple[bytes, bytes]]) -> int:
        check = key.verify
        started = time.perf_counter_ns()
        for signature, signed in parts:
            check(signature, signed)
        return time.perf_counter_ns() - started

    async def keel(which: Any, tokens: Sequence[str]) -> int:
        verify = which.verify
        started = time.perf_counter_ns()
        for token in tokens:
            await verify(token)
        return time.perf_counter_ns() - started

    samples: dict[str, list[float]] = {
        name: [] for name in ("raw", "keel_first", "keel_first_full", "keel_seen", "ed25519")
    }
    raw(batches[0][: n // 10])  # warm-up: imports, caches, branch predictors
    for tokens in batches:
        parts = []
        for token in tokens:
            head, payload, signature = token.split(".")
            parts.append((_b64decode(signature), f"{head}.{payload}".encode()))
        samples["raw"].append(raw(tokens) / n / 1000)
        verifier._cache.clear()  # first sight: none of these tokens is cached (n < cache size)
        samples["keel_first"].append(await keel(verifier, tokens) / n / 1000)
        samples["keel_first_full"].append(await keel(full, tokens) / n / 1000)
        await verifier.verify(seen_token)
        samples["keel_seen"].append(
            await keel(verifier, [seen_token] * seen_reps) / seen_reps / 1000
        )
        samples["ed25519"].append(floor(parts) / n / 1000)
        await asyncio.sleep(0)  # let the kernel's background tasks run between rounds
    median = {name: statistics.median(values) for name, values in samples.items()}
    paired = {  # the same ratios taken round by round (adjacent in time), then their median
        f"{name}/raw": statistics.median(
            k / r for k, r in zip(samples[name], samples["raw"], strict=True)
        )
        for name in ("keel_first", "keel_first_full")
    }
    return {
        "tokens_per_round": n,
        "seen_repetitions": seen_reps,
        "cache_size": verifier.cache_size,
        "token_bytes": len(seen_token),
        "samples_us": samples,
        "median_us": median,
        "ratio": {
            "first_sight/raw": median["keel_first"] / median["raw"],
            "first_sight_full_cache/raw": median["keel_first_full"] / median["raw"],
            "seen/raw": median["keel_seen"] / median["raw"],
        },
        "paired_ratio_median": paired,
    }


async def _setup(data_dir: Path, args: argparse.Namespace) -> Setup:
    """Start a real kernel in-process: users for the login test, the bench token, and (a)."""
    from asgi_lifespan import LifespanManager

    from keel import create_app
    from keel.identity.passwords import verify_password
    from keel.identity.runtime import identity_runtime
    from keel.identity.service import create_user, prepare_password

    config = bench_config(data_dir, rate_limits=True, log_level="warning")
    app = create_app(config, modules=[bench_module()])
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30):
        keel = app.state.keel
        runtime = identity_runtime(keel)
        password = "bench-" + secrets.token_urlsafe(18)
        emails = [f"bench-{i}@example.com" for i in range(args.login_accounts)]
        stored = await prepare_password(password, email=emails[0])
        async with keel.db.transaction() as session:
            users = [await create_user(session, email=e, password_hash=stored) for e in emails]
        timings, cpu = [], []
        for _ in range(3):
            started, started_cpu = time.perf_counter(), time.process_time()
            outcome = await verify_password(password, stored)
            timings.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
            assert outcome.ok
        verify = await _measure_verify(runtime, users[0].id, args)
        token = runtime.keys.sign(_claims(keel.config, users[0].id, "", int(time.time())))
    return Setup(
        token=token,
        emails=emails,
        password=password,
        argon2_params=stored.split("$")[3] if stored.startswith("$argon2") else "?",
        argon2_verify_ms=statistics.median(timings),
        argon2_verify_cpu_ms=statistics.median(cpu),
        verify=verify,
    )


# --- servers -------------------------------------------------------------------------------
class AuthServer(Server):
    """One uvicorn subprocess serving `_auth_apps:keel_auth` on the set-up's data directory."""

    def __init__(
        self, name: str, *, rate_limits: bool, access_log: bool, workdir: Path, data_dir: Path
    ) -> None:
        env = {
            "KEEL_CONFIG_FILE": str(workdir / "no-keel.toml"),  # ignore any keel.toml
            "BENCH_RATE_LIMITS": "1" if rate_limits else "0",
        }
        super().__init__(
            name,
            "_auth_apps:keel_auth",
            path=PING_PATH,
            access_log=access_log,
            workdir=workdir,
            data_dir=data_dir,
            env=env,
            cwd=workdir,
        )
        self.rate_limits = rate_limits


# --- (b) authenticated + rate-limited requests ---------------------------------------------
@dataclass
class Sample:
    """One measured load run of one case."""

    case: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


CASES = ("anon_off", "bearer_off", "bearer_on")
CASE_TITLES = {
    "anon_off": "no credential, limits off (baseline)",
    "bearer_off": "bearer token, limits off",
    "bearer_on": "bearer token, limits on (target)",
}


def measure_http(
    args: argparse.Namespace, servers: dict[str, AuthServer], token: str
) -> list[Sample]:
    """Check each case answers as expected, warm each server, then load the cases alternately."""
    load = run_wrk if args.loadgen == "wrk" else run_python
    bearer = {"Authorization": f"Bearer {token}"}
    cases: dict[str, tuple[AuthServer, dict[str, str]]] = {
        "anon_off": (servers["off"], {}),
        "bearer_off": (servers["off"], bearer),
        "bearer_on": (servers["on"], bearer),
    }
    for case, (server, headers) in cases.items():
        status, got = get(server.url(), headers)
        limited = "ratelimit-limit" in got
        if status != 200 or limited != server.rate_limits:
            raise RuntimeError(f"{case}: status {status}, RateLimit headers {limited}: unexpected")
    for server in servers.values():
        load(server.url(), args.threads, args.connections, args.warmup, headers=bearer)
    samples: list[Sample] = []
    for rnd in range(1, args.rounds + 1):
        for case, (server, headers) in cases.items():
            rps, p50, p99, errors = load(
                server.url(), args.threads, args.connections, args.duration, headers=headers
            )
            samples.append(Sample(case, rnd, rps, p50, p99, errors))
            print(f"  {case:10} round {rnd}: {rps:9.1f} req/s", file=sys.stderr)
    return samples


def summarize_http(samples: list[Sample]) -> dict[str, Any]:
    """Median per case and case/baseline ratios of the medians."""
    med = {
        case: {
            key: statistics.median(getattr(s, key) for s in samples if s.case == case)
            for key in ("rps", "p50_ms", "p99_ms")
        }
        for case in CASES
    }
    base = med["anon_off"]
    ratio = {case: {key: med[case][key] / base[key] for key in base} for case in CASES[1:]}
    return {"samples": [asdict(s) for s in samples], "median": med, "ratio": ratio}


# --- (c) logins ----------------------------------------------------------------------------
async def _login_client(
    port: int,
    body: bytes,
    *,
    take: Callable[[], bool],
    deadline: float,
    results: list[tuple[float, bytes]],
    refusals: list[bytes],
) -> None:
    request = (
        f"POST {LOGIN_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline and take():
            started = time.perf_counter()
            status, body = await exchange(reader, writer, request)
            results.append((time.perf_counter() - started, status))
            if status != b"200":
                refusals.append(body)
    finally:
        writer.close()


async def _logins(
    port: int, emails: list[str], password: str, total: int, concurrency: int, *, seconds: float
) -> tuple[list[tuple[float, bytes]], list[bytes], float]:
    left = [total]

    def take() -> bool:
        left[0] -= 1
        return left[0] >= 0

    results: list[tuple[float, bytes]] = []
    refusals: list[bytes] = []
    bodies = [
        json.dumps({"email": emails[i % len(emails)], "password": password}).encode()
        for i in range(concurrency)
    ]
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    clients = (
        _login_client(port, b, take=take, deadline=deadline, results=results, refusals=refusals)
        for b in bodies
    )
    await asyncio.gather(*clients)
    return results, refusals, time.perf_counter() - started


def measure_logins(args: argparse.Namespace, server: Server, setup: Setup) -> dict[str, Any]:
    """A warm-up login per connection, then `args.logins` logins at `args.login_concurrency`
    (no new request after `args.login_seconds`)."""
    conc = args.login_concurrency
    asyncio.run(_logins(server.port, setup.emails, setup.password, conc, conc, seconds=60))
    results, refusals, elapsed = asyncio.run(
        _logins(
            server.port,
            setup.emails,
            setup.password,
            args.logins,
            conc,
            seconds=args.login_seconds,
        )
    )
    ok = sorted(lat for lat, status in results if status == b"200")
    statuses: dict[str, int] = {}
    for _, status in results:
        statuses[status.decode()] = statuses.get(status.decode(), 0) + 1
    problems: dict[str, int] = {}  # the `type` of each error answer
    for body in refusals:
        with contextlib.suppress(ValueError, AttributeError):
            kind = str(json.loads(body).get("type"))
            problems[kind] = problems.get(kind, 0) + 1
    return {
        "requested": args.logins,
        "time_limit_s": args.login_seconds,
        "requests": len(results),
        "succeeded": len(ok),
        "statuses": statuses,
        "problems": problems,
        "seconds": elapsed,
        "logins_per_s": len(ok) / elapsed if elapsed else 0.0,
        "p50_ms": pick(ok, 0.50) * 1000,
        "p90_ms": pick(ok, 0.90) * 1000,
        "p99_ms": pick(ok, 0.99) * 1000,
        "concurrency": conc,
        "accounts": len(setup.emails),
        "argon2": setup.argon2_params,
        "argon2_verify_ms": setup.argon2_verify_ms,
        "argon2_verify_cpu_ms": setup.argon2_verify_cpu_ms,
    }


# --- output --------------------------------------------------------------------------------
def _verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def print_verify(result: dict[str, Any]) -> None:
    med, ratio = result["median_us"], result["ratio"]
    rows = {
        "raw": "raw PyJWT jwt.decode (baseline)",
        "keel_first": "Keel verify, first sight (cache empty)",
        "keel_first_full": "Keel verify, first sight (cache full)",
        "keel_seen": "Keel verify, seen before (cache hit)",
        "ed25519": "Ed25519 signature check alone (floor)",
    }
    print(
        f"\n(a) JWT verification, µs/token ({len(result['samples_us']['raw'])} rounds of "
        f"{result['tokens_per_round']} tokens; seen: {result['seen_repetitions']} repeats; "
        f"token {result['token_bytes']} bytes, cache size {result['cache_size']})"
    )
    print(f"  {'':42}{'median':>9}  rounds")
    for key, title in rows.items():
        runs = " ".join(f"{v:.2f}" for v in result["samples_us"][key])
        print(f"  {title:42}{med[key]:>9.2f}  {runs}")
    first = ratio["first_sight/raw"]
    full = ratio["first_sight_full_cache/raw"]
    print(f"  first sight / raw: {first:.3f} (cache full: {full:.3f})", end="  ")
    print(f"{_verdict(first <= TARGET_FIRST_SIGHT_RATIO)} target <= {TARGET_FIRST_SIGHT_RATIO}")
    paired = result["paired_ratio_median"]
    print(
        f"  (median of per-round ratios: {paired['keel_first/raw']:.3f}, "
        f"cache full {paired['keel_first_full/raw']:.3f})"
    )
    seen = med["keel_seen"]
    print(f"  seen before: {seen:.2f} µs  {_verdict(seen < TARGET_SEEN_US)} target < 10 µs")


def print_http(result: dict[str, Any]) -> None:
    print(f"\n(b) GET {PING_PATH}")
    print(f"  {'run':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for s in result["samples"]:
        row = f"  {s['case'] + ' #' + str(s['round']):<16}{s['rps']:>10.1f}"
        print(f"{row}{s['p50_ms']:>10.2f}{s['p99_ms']:>10.2f}{s['errors']:>8}")
    for case, m in result["median"].items():
        row = f"  {case + ' median':<16}{m['rps']:>10.1f}{m['p50_ms']:>10.2f}"
        print(f"{row}{m['p99_ms']:>10.2f}   {CASE_TITLES[case]}")
    for case, r in result["ratio"].items():
        print(f"  {case + '/anon':<16}{r['rps']:>10.3f}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}")
    r = result["ratio"]["bearer_on"]["rps"]
    verdict = _verdict(r >= TARGET_THROUGHPUT_RATIO)
    print(f"  throughput bearer_on/anon_off {r:.3f} {verdict} target >= {TARGET_THROUGHPUT_RATIO}")


def print_logins(result: dict[str, Any]) -> None:
    print(
        f"\n(c) POST {LOGIN_PATH}, concurrency {result['concurrency']}, "
        f"{result['accounts']} accounts, argon2id {result['argon2']}"
    )
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(result["statuses"].items()))
    cut = result["requests"] < result["requested"]
    note = f"; stopped by the {result['time_limit_s']:g} s limit" if cut else ""
    print(f"  {result['requests']} requests in {result['seconds']:.1f} s ({statuses}{note})")
    for kind, count in result["problems"].items():
        print(f"  refused {count}x: {kind}")
    print(
        f"  {result['logins_per_s']:.1f} logins/s, p50 {result['p50_ms']:.0f} ms, "
        f"p90 {result['p90_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms"
    )
    print(
        f"  one argon2id verification alone (in-process): {result['argon2_verify_ms']:.0f} ms"
        f" wall, {result['argon2_verify_cpu_ms']:.0f} ms CPU (all its threads)"
    )


# --- driver --------------------------------------------------------------------------------
def _run(coro: Coroutine[Any, Any, Setup]) -> Setup:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(coro)  # type: ignore[no-any-return, unused-ignore]
    return asyncio.run(coro)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 30-45 s smoke run")
    parser.add_argument("--rounds", type=int, help="HTTP: measured runs per case (3)")
    parser.add_argument("--duration", type=float, help="HTTP: seconds per measured run (8)")
    parser.add_argument("--warmup", type=float, help="HTTP: warm-up seconds per server (2)")
    parser.add_argument("--connections", type=int, default=32, help="HTTP: connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads / client processes")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-access-log", action="store_true", help="servers log no requests")
    parser.add_argument("--verify-rounds", type=int, help="JWT: rounds (10)")
    parser.add_argument("--verify-tokens", type=int, help="JWT: distinct tokens per round (1000)")
    parser.add_argument("--logins", type=int, help="logins measured (200)")
    parser.add_argument("--login-seconds", type=float, help="no new login after this (45)")
    parser.add_argument("--login-concurrency", type=int, default=10)
    parser.add_argument(
        "--login-accounts", type=int, help="accounts signing in (default: one per connection)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.login_accounts = args.login_accounts or args.login_concurrency
    args.loadgen = resolve_loadgen(args.loadgen)
    loadgen = loadgen_label(args.loadgen, args.threads)
    # Run the `finally` clean-ups on SIGTERM, and on Ctrl-C even if started with SIGINT ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)

    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-auth-"))
    data_dir = workdir / "data"
    for name in [k for k in os.environ if k.startswith("KEEL_")]:
        del os.environ[name]
    os.environ["KEEL_CONFIG_FILE"] = str(workdir / "no-keel.toml")  # ignore any keel.toml
    access_log = not args.no_access_log
    servers = {
        name: AuthServer(
            f"limits-{name}",
            rate_limits=name == "on",
            access_log=access_log,
            workdir=workdir,
            data_dir=data_dir,
        )
        for name in ("off", "on")
    }
    started = time.monotonic()
    load_before = os.getloadavg()[0]  # other work on the machine skews every figure
    phases: dict[str, float] = {}
    try:
        print("set-up and (a) JWT verification ...", file=sys.stderr)
        setup = _run(_setup(data_dir, args))
        phases["setup_and_a"] = time.monotonic() - started
        for server in servers.values():
            server.start(timeout=60.0)
        print("(b) authenticated requests ...", file=sys.stderr)
        http = summarize_http(measure_http(args, servers, setup.token))
        servers["off"].stop()
        phases["b"] = time.monotonic() - started - sum(phases.values())
        print("(c) logins ...", file=sys.stderr)
        logins = measure_logins(args, servers["on"], setup)
        phases["c"] = time.monotonic() - started - sum(phases.values())
    finally:
        for server in servers.values():
            server.stop()
        if args.keep_logs:
            print(f"server logs and data kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    packages: tuple[str, ...] = ("keel-server", "fastapi", "starlette", "uvicorn", "uvloop")
    packages += ("httptools", "pyjwt", "cryptography", "argon2-cffi", "pwdlib", "limits")
    settings = {
        "loadgen": loadgen,
        "python": sys.version.split()[0],
        "versions": {pkg: version(pkg) for pkg in packages},
        "cpus": os.cpu_count(),
        "seconds": round(time.monotonic() - started, 1),
        "phase_seconds": {k: round(v, 1) for k, v in phases.items()},
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **{k: v for k, v in vars(args).items() if k not in ("json", "keep_logs", "loadgen")},
    }
    if args.json:
        results = {"verify": setup.verify, "http": http, "logins": logins}
        print(json.dumps({"settings": settings, **results}, indent=2))
        return 0
    took = ", ".join(f"{k} {v:g}" for k, v in settings["phase_seconds"].items())
    print(f"Keel authentication cost  |  load: {loadgen}  |  {settings['seconds']:g} s ({took})")
    print("  " + ", ".join(f"{k} {v}" for k, v in settings["versions"].items()))
    before, after = settings["loadavg_1min"]
    print(
        f"  python {settings['python']}, {settings['cpus']} CPUs, uvicorn 1 worker, "
        f"load average {before:g} at start, {after:g} at end"
    )
    print(
        f"  HTTP: -t{args.threads} -c{args.connections}, {args.duration:g}s x {args.rounds} "
        f"rounds, access log {'on' if access_log else 'off'}"
    )
    print_verify(setup.verify)
    print_http(http)
    print_logins(logins)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
