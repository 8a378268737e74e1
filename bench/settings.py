"""Runtime settings: the cost of reading a setting against a plain attribute read, and how
long a committed change takes to reach another process.

Reads: a kernel on a temporary SQLite file loads a deployment override and one tenant's
override; then, in alternating rounds of `--reads` reads, a plain attribute of a slotted
object (the baseline), `handle.value`, `handle.get(tenant)` (the tenant with an override, and
one without) and `handle.read()` are timed; ns/op is the best round of each, and the ratio to
the baseline is printed (target for `.value`: <= 5x).

Propagation: a parent kernel changes a setting `--changes` times; a second process
(`tests.settings.watcher`) reports when its handle shows each value. Delays from commit to
seen, p50/p99, over PostgreSQL LISTEN (poll slowed to 30 s) and over Redis on a shared SQLite
file (likewise); target p99 < 1 s. Anchors: SDKs and caches that poll take 15-60 s.

    python bench/settings.py [--reads 1000000] [--rounds 5] [--changes 50] [--json]
        [--postgres-url URL] [--redis-url URL] [--skip-propagation]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from keel import Config, Keel, settings  # noqa: E402
from keel.settings.service import lookup, set_value, write  # noqa: E402
from keel.settings.spec import forget  # noqa: E402

TARGET_READ_RATIO = 5.0
TARGET_P99_S = 1.0
MASTER_KEY = "a2VlbC10ZXN0LW1hc3Rlci1rZXktMzItYnl0ZXMhISE"
TENANT = "0190aaaa-0000-7000-8000-000000000001"


class _Plain:
    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


def _time_loop(body: Callable[[], Any], reads: int) -> float:
    """ns per call of `body`, the loop's own cost subtracted."""
    loop = range(reads // 10)
    started = time.perf_counter_ns()
    for _ in loop:
        body()
        body()
        body()
        body()
        body()
        body()
        body()
        body()
        body()
        body()
    return (time.perf_counter_ns() - started) / reads


def _attribute_loop(target: Any, reads: int) -> float:
    """ns per `target.value` read, unrolled so the loop is a small part of the time."""
    loop = range(reads // 10)
    started = time.perf_counter_ns()
    for _ in loop:
        _ = target.value
        _ = target.value
        _ = target.value
        _ = target.value
        _ = target.value
        _ = target.value
        _ = target.value
        _ = target.value
        _ = target.value
        _ = target.value
    return (time.perf_counter_ns() - started) / reads


async def reads_bench(reads: int, rounds: int) -> dict[str, Any]:
    """ns/op of setting reads against a plain attribute read, after a real store load."""
    handle = settings.declare("bench.limit", int, default=5, per_tenant=True)
    with tempfile.TemporaryDirectory() as directory:
        config = Config(
            data_dir=Path(directory),
            database_url=f"sqlite+aiosqlite:///{directory}/keel.db",
            auto_migrate=True,
            worker_in_process=False,
        )
        keel = Keel(config, modules=[])
        await keel.startup()
        try:
            setting = lookup("bench.limit")
            await write(keel.db, lambda s: set_value(s, setting, 7, reason="bench"))
            await write(
                keel.db,
                lambda s: set_value(s, setting, 9, reason="bench", tenant_id=TENANT),
            )
            await settings.store(keel).reload()
            assert (handle.value, handle.get(TENANT)) == (7, 9)
            plain = _Plain(7)
            other = "0190bbbb-0000-7000-8000-000000000002"
            best: dict[str, float] = {}
            cases: dict[str, Callable[[], float]] = {
                "attribute": lambda: _attribute_loop(plain, reads),
                "handle.value": lambda: _attribute_loop(handle, reads),
                "get(tenant with override)": lambda: _time_loop(lambda: handle.get(TENANT), reads),
                "get(tenant without)": lambda: _time_loop(lambda: handle.get(other), reads),
                "read()": lambda: _time_loop(handle.read, reads),
                "call baseline (lambda: attribute)": lambda: _time_loop(lambda: plain.value, reads),
            }
            for _ in range(rounds):
                for name, run in cases.items():
                    best[name] = min(best.get(name, float("inf")), run())
        finally:
            await keel.shutdown()
            forget("bench.limit")
    base = best["attribute"]
    call_base = best["call baseline (lambda: attribute)"]
    return {
        "ns_per_op": {name: round(value, 2) for name, value in best.items()},
        "value_vs_attribute": round(best["handle.value"] / base, 2),
        "get_vs_lambda_attribute": round(best["get(tenant with override)"] / call_base, 2),
        "read_vs_lambda_attribute": round(best["read()"] / call_base, 2),
    }


async def propagation_bench(
    changes: int, postgres_url: str | None, redis_url: str | None
) -> dict[str, Any]:
    """Commit-to-seen delays in another process over PostgreSQL LISTEN and over Redis."""
    from tests.settings.propagation import measure

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory)

        def env(config: Config, **extra: str) -> dict[str, str]:
            return {
                "KEEL_DATABASE_URL": config.effective_database_url,
                "KEEL_DATA_DIR": str(base / "data"),
                "KEEL_MASTER_KEY": MASTER_KEY,
                "KEEL_AUTO_MIGRATE": "false",
                "KEEL_WORKER_IN_PROCESS": "false",
                "KEEL_LOG_LEVEL": "warning",
                "KEEL_CHANGES_POLL_INTERVAL": "30",
                "KEEL_CONFIG_FILE": str(base / "absent.toml"),
                **extra,
            }

        def config(url: str, **extra: Any) -> Config:
            return Config(
                data_dir=base / "data",
                database_url=url,
                master_key=MASTER_KEY,
                auto_migrate=True,
                worker_in_process=False,
                changes_poll_interval=30.0,
                log_level="warning",
                **extra,
            )

        if postgres_url:
            url, drop = _fresh_schema(postgres_url)
            try:
                on_pg = config(url)
                results["postgres_listen"] = _summary(
                    await measure(on_pg, env(on_pg), changes=changes)
                )
            finally:
                drop()
        if redis_url:
            on_redis = config(f"sqlite+aiosqlite:///{base}/shared.db", redis_url=redis_url)
            delays = await measure(
                on_redis, env(on_redis, KEEL_REDIS_URL=redis_url), changes=changes
            )
            results["redis_on_sqlite"] = _summary(delays)
    return results


def _fresh_schema(url: str) -> tuple[str, Callable[[], None]]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}", drop


def _summary(delays: list[float]) -> dict[str, Any]:
    ordered = sorted(delays)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "changes": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "p99_vs_target": round(p99 / TARGET_P99_S, 3),
    }


async def main() -> None:
    """Run both parts and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--skip-propagation", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    result: dict[str, Any] = {"reads": await reads_bench(args.reads, args.rounds)}
    if not args.skip_propagation:
        result["propagation"] = await propagation_bench(
            args.changes, args.postgres_url or None, args.redis_url or None
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    reads = result["reads"]
    print("Setting reads (best of rounds, ns/op):")
    for name, value in reads["ns_per_op"].items():
        print(f"  {name:36} {value:8.2f}")
    verdict = "met" if reads["value_vs_attribute"] <= TARGET_READ_RATIO else "MISSED"
    print(f"  handle.value / attribute: {reads['value_vs_attribute']}x (target <= 5x: {verdict})")
    print(f"  get(tenant) / lambda attribute: {reads['get_vs_lambda_attribute']}x")
    print(f"  read() / lambda attribute: {reads['read_vs_lambda_attribute']}x")
    for name, figures in result.get("propagation", {}).items():
        verdict = "met" if figures["p99_vs_target"] < 1 else "MISSED"
        print(
            f"Propagation over {name}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
            f"max {figures['max_ms']} ms over {figures['changes']} changes "
            f"(p99 / 1 s = {figures['p99_vs_target']}: {verdict})"
        )


if __name__ == "__main__":
    asyncio.run(main())
