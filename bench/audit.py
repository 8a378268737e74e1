"""Cost of the audit trail: appending events, verifying a million, reading pages.

Three measurements in one run, on SQLite (a file in a temp dir) and on PostgreSQL (a fresh
schema, dropped afterwards), each a Keel database migrated to head (`_audit_setup.py`):

(a) Appended events/s with 1 and 16 concurrent writers. Each writer loops over transactions of
    one event: `async with db.transaction() as s: await record(s, ...)`, while the server's
    sealer runs beside them in the same event loop (`keel.audit.sealer.Sealer`: every 250 ms,
    `seal()` until a batch comes back short, a checkpoint every 10,000 events or 60 s). The
    baseline, in the same run, inserts the same rows (same dict: new id, time, diff, trace)
    with a Core INSERT into `bench_plain_events`, the same columns and read indexes without
    the chain (no triggers, no unique `seq`, no sealing), in the same transaction pattern.
    Rounds alternate plain, audit; medians and audit/plain ratios. After each audit run the
    sealer stops and drains as at a server's shutdown: the drain time, and that nothing is
    left unsealed, are reported, with the events sealed per `seal()` call, the share of the
    time the sealer was busy, and the bench process's CPU per event (all its threads: on
    SQLite that includes the database's own work). Target: audit >= 0.7x plain.
(b) `verify(db, ring=ring, workers=None)` over 1,000,000 sealed events, as `keel audit verify`
    runs it (from 100,000 events on 2+ CPUs split over this process and one helper process;
    target < 10 s). The events are made fast: drawn from a realistic spread (20 tenants, 30
    actions, 1000 actors, Zipf-skewed), chained in Python with `chain_hash` from the head
    (a)'s events left, inserted already sealed with executemany in batches of 10,000, and a
    checkpoint signed after each batch (`checkpoint(db, ring, force=True)`, as the server
    signs every 10,000 events). For scale verify() in one process (`workers=1`, as the HTTP
    API runs it), its raw query streamed in one process without hashing, and the walk alone
    (rows in memory) are timed too.
(c) p50/p95 latency of `list_events` pages of 50, newest first, over the same events
    (target < 50 ms): a first page filtered by tenant and action prefix, a deep keyset page
    (`before=` the id of an event 90 % of the events back, i.e. ~900k back) without a filter,
    and the same deep page filtered; tenants and prefixes drawn uniformly, so rare
    combinations count as much as busy ones.

`--quick` makes 100,000 events instead, reports (b) extrapolated linearly to 1,000,000
(labelled) and (c) at 100,000 (not extrapolated), and shortens (a). Everything is bounded in
count and time (full: about 6 minutes per dialect, 12 in all), touches only 127.0.0.1 and its
own temp dir and schema, and prints progress on stderr.

    python bench/audit.py [--quick] [--dialects sqlite,postgresql] [--events N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _audit_setup import (  # noqa: E402
    RESOURCES,
    Target,
    Workload,
    open_target,
    plain_events,
    postgres_problem,
)
from keel.audit.chain import head as chain_head  # noqa: E402
from keel.audit.models import AuditEvent  # noqa: E402
from keel.audit.sealer import SEAL_INTERVAL  # noqa: E402
from keel.audit.sealer import Sealer as AuditSealer  # noqa: E402
from keel.audit.service import (  # noqa: E402
    GENESIS,
    EventFilter,
    chain_hash,
    checkpoint,
    list_events,
    record,
    verify,
)
from keel.audit.verification import raw_rows  # noqa: E402
from keel.audit.walk import RangeWalk, time_reader  # noqa: E402
from keel.core.context import reset_trace, set_trace  # noqa: E402
from keel.core.principal import tenant_scope  # noqa: E402

TARGET_APPEND_RATIO = 0.7
TARGET_VERIFY_S = 10.0
TARGET_PAGE_MS = 50.0
REFERENCE_EVENTS = 1_000_000
GENERATE_BATCH = 10_000
FULL = {"rounds": 5, "duration": 5.0, "events": REFERENCE_EVENTS, "verify_rounds": 2}
QUICK = {"rounds": 1, "duration": 2.0, "events": 100_000, "verify_rounds": 1}
WRITERS = (1, 16)
KINDS = ("plain", "audit")
PAGE_KINDS = {
    "first_filtered": "first page, tenant + action prefix",
    "deep": "deep page (before= ~90 % back), no filter",
    "deep_filtered": "deep page, tenant + action prefix",
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _pick(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# --- (a) appending -------------------------------------------------------------------------
class Sealer:
    """The server's sealer (`keel.audit.sealer.Sealer`, the loop `keel serve` runs: seal until
    a batch comes back short, sign a checkpoint every 10,000 events or 60 s, sleep 250 ms)
    with a clean stop: once `stopping` is set the loop ends and, as at a server's shutdown,
    `drain()` seals what is left."""

    def __init__(self, target: Target) -> None:
        async def keyring() -> Any:
            return target.ring

        self.core = AuditSealer(target.db, keyring)
        self.stop = asyncio.Event()
        self.stopping: float | None = None
        self.drained_at: float | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self.core.run(self.stop)
        started = loop.time()
        await self.core.drain()
        self.core.busy += loop.time() - started
        self.drained_at = loop.time()

    def finish(self) -> None:
        self.stopping = asyncio.get_running_loop().time()
        self.stop.set()


async def _unsealed(target: Target) -> int:
    async with target.db.session() as session:
        query = select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_(None))
        return int(await session.scalar(query) or 0)


async def append_run(
    target: Target, workload: Workload, kind: str, writers: int, *, seconds: float, seed: int
) -> dict[str, Any]:
    """`writers` tasks writing one event per transaction for `seconds`."""
    db, loop = target.db, asyncio.get_running_loop()
    sealer = Sealer(target) if kind == "audit" else None
    sealing = asyncio.create_task(sealer.run()) if sealer is not None else None
    count = 0
    deadline = loop.time() + seconds

    async def worker(index: int) -> None:
        nonlocal count
        rng = random.Random(seed * 1000 + index)
        while loop.time() < deadline:
            spec, trace = workload.spec(rng), workload.trace(rng)
            token = set_trace(trace)
            try:
                async with db.transaction() as session:
                    if sealer is not None:
                        await record(
                            session,
                            spec.action,
                            resource=spec.resource,
                            outcome=spec.outcome,
                            before=spec.before,
                            after=spec.after,
                            reason=spec.reason,
                            actor=spec.actor,
                        )
                    else:
                        await session.execute(plain_events.insert(), workload.row(spec, trace))
            finally:
                reset_trace(token)
            count += 1

    started, cpu = loop.time(), time.process_time()
    try:
        await asyncio.gather(*(worker(index) for index in range(writers)))
    except BaseException:
        if sealing is not None:
            sealing.cancel()
        raise
    elapsed = loop.time() - started
    result: dict[str, Any] = {
        "kind": kind,
        "writers": writers,
        "events": count,
        "seconds": elapsed,
        "events_per_s": count / elapsed,
        "cpu_us_per_event": (time.process_time() - cpu) / count * 1e6,
    }
    if sealer is not None and sealing is not None:
        sealer.finish()
        await asyncio.wait_for(sealing, timeout=120)
        assert sealer.drained_at is not None
        unsealed = await _unsealed(target)
        result |= {
            "cpu_us_per_event": (time.process_time() - cpu) / count * 1e6,  # with the drain
            "drain_s": sealer.drained_at - sealer.stopping,
            "seal_calls": sealer.core.calls,
            "events_per_seal_call": sealer.core.sealed / max(1, sealer.core.calls),
            "largest_seal_batch": sealer.core.largest,
            "sealer_busy_share": sealer.core.busy / (sealer.drained_at - started),
            "sealed": sealer.core.sealed,
            "unsealed_after": unsealed,
            "all_sealed": unsealed == 0 and sealer.core.sealed == count,
        }
    return result


async def measure_append(target: Target, workload: Workload, args: argparse.Namespace) -> dict:
    """Warm-up, then `args.rounds` rounds of plain, audit at each writer count."""
    for kind in KINDS:
        await append_run(target, workload, kind, 4, seconds=1.0, seed=0)
    samples: list[dict[str, Any]] = []
    for rnd in range(1, args.rounds + 1):
        for writers in WRITERS:
            for kind in KINDS:
                sample = await append_run(
                    target, workload, kind, writers, seconds=args.duration, seed=rnd * 100 + writers
                )
                sample["round"] = rnd
                samples.append(sample)
                extra = (
                    f", drain {sample['drain_s']:.2f} s, all sealed: {sample['all_sealed']}"
                    if kind == "audit"
                    else ""
                )
                _log(
                    f"  (a) {target.dialect} {writers:>2} writers {kind:5} round {rnd}: "
                    f"{sample['events_per_s']:8.1f} events/s{extra}"
                )
    summary: dict[str, Any] = {}
    for writers in WRITERS:
        runs = {
            k: [s for s in samples if s["writers"] == writers and s["kind"] == k] for k in KINDS
        }
        median = {k: statistics.median(s["events_per_s"] for s in runs[k]) for k in KINDS}
        paired = [
            a["events_per_s"] / p["events_per_s"]
            for p, a in zip(runs["plain"], runs["audit"], strict=True)
        ]
        summary[str(writers)] = {
            "median_events_per_s": median,
            "ratio": median["audit"] / median["plain"],
            "paired_ratio_median": statistics.median(paired),
            "median_cpu_us_per_event": {
                k: statistics.median(s["cpu_us_per_event"] for s in runs[k]) for k in KINDS
            },
            "drain_s_max": max(s["drain_s"] for s in runs["audit"]),
            "events_per_seal_call": statistics.median(
                s["events_per_seal_call"] for s in runs["audit"]
            ),
            "sealer_busy_share": statistics.median(s["sealer_busy_share"] for s in runs["audit"]),
            "largest_seal_batch": max(s["largest_seal_batch"] for s in runs["audit"]),
            "all_sealed": all(s["all_sealed"] for s in runs["audit"]),
        }
    return {"samples": samples, "summary": summary, "duration_s": args.duration}


# --- (b) a million events and their verification -------------------------------------------
async def _head(target: Target) -> tuple[int, str, int]:
    """(seq, hash) of the chain's head and the number of events."""
    async with target.db.session() as session:
        seq, digest = await chain_head(session)
        count = int(await session.scalar(select(func.count()).select_from(AuditEvent)) or 0)
    return seq, digest, count


async def generate(target: Target, workload: Workload, events: int) -> dict[str, Any]:
    """Top the chain up to `events` sealed events, a checkpoint after each batch."""
    db, table = target.db, AuditEvent.__table__
    if await _unsealed(target):
        raise RuntimeError("unsealed events left by (a)")
    seq, prev, existing = await _head(target)
    if seq != existing:
        raise RuntimeError(f"head seq {seq} but {existing} events")
    rng = random.Random(42)
    build = insert = sign = 0.0
    started = last_report = time.perf_counter()
    made, need = 0, max(0, events - existing)
    while made < need:
        step = min(GENERATE_BATCH, need - made)
        begin = time.perf_counter()
        rows = []
        sealed_at = datetime.now(UTC)
        for _ in range(step):
            row = workload.row(workload.spec(rng), workload.trace(rng))
            seq += 1
            digest = chain_hash(prev, seq, row)
            row |= {"seq": seq, "prev_hash": prev, "hash": digest, "sealed_at": sealed_at}
            prev = digest
            rows.append(row)
        middle = time.perf_counter()
        async with db.transaction() as session:
            await session.execute(table.insert(), rows)
        end = time.perf_counter()
        await checkpoint(db, target.ring, force=True)
        build, insert, sign = (
            build + middle - begin,
            insert + end - middle,
            sign + time.perf_counter() - end,
        )
        made += step
        if time.perf_counter() - last_report > 10 or made == need:
            last_report = time.perf_counter()
            rate = made / (last_report - started)
            _log(
                f"  (b) {target.dialect}: {existing + made:,}/{events:,} events "
                f"({rate:,.0f}/s, {(need - made) / rate:.0f} s to go)"
            )
    analyzed = False
    if target.dialect == "postgresql":  # what autovacuum does within a minute of the load
        async with db.engine.connect() as connection:
            await connection.execute(text("ANALYZE keel_audit_events"))
            await connection.commit()
        analyzed = True
    return {
        "events": events,
        "from_a": existing,
        "generated": need,
        "seconds": time.perf_counter() - started,
        "build_and_hash_s": build,
        "insert_s": insert,
        "checkpoint_s": sign,
        "batch": GENERATE_BATCH,
        "analyzed": analyzed,
    }


async def stream_only(target: Target) -> tuple[float, int]:
    """verify()'s raw query over the whole chain read in one process as verify() reads it
    (driver cursor, batches of 5,000, read ahead on PostgreSQL), without hashing."""
    rows = 0
    started = time.perf_counter()
    async with raw_rows(target.db, 1, 2**62, 5000) as batches:
        async for batch in batches:
            rows += len(batch)
    return time.perf_counter() - started, rows


async def hash_only(target: Target, count: int) -> float:
    """µs per event of the walk alone (`RangeWalk.check`: links, `digest`, bookkeeping), over
    the first `count` events' raw rows held in memory."""
    held: list[Any] = []
    async with raw_rows(target.db, 1, count, 5000) as batches:
        async for batch in batches:
            held.extend(batch)
    walk = RangeWalk(1, GENESIS, (), time_reader(target.dialect))
    started = time.perf_counter()
    assert walk.check(held), walk.broken
    return (time.perf_counter() - started) / max(1, len(held)) * 1e6


async def measure_verify(target: Target, events: int, rounds: int) -> dict[str, Any]:
    """verify() `rounds` times as `keel audit verify` runs it (`workers=None`: split over a
    helper process from 200,000 events on 2+ CPUs); once in this process only (`workers=1`),
    the raw query streamed without hashing, and the walk alone, for scale."""
    runs: dict[str, list[float]] = {"verify": [], "one_process": [], "stream": []}
    outcome: dict[str, Any] = {}
    for rnd in range(1, rounds + 1):
        started = time.perf_counter()
        result = await verify(target.db, ring=target.ring, workers=None)
        runs["verify"].append(time.perf_counter() - started)
        outcome = result.as_dict()
        _log(
            f"  (b) {target.dialect} verify round {rnd}: {runs['verify'][-1]:.2f} s "
            f"(ok={result.ok}, checked {result.checked:,}, checkpoints {result.checkpoints})"
        )
    started = time.perf_counter()
    single = await verify(target.db, ring=target.ring, workers=1)
    runs["one_process"].append(time.perf_counter() - started)
    assert single.as_dict() == outcome, (single, outcome)
    seconds, rows = await stream_only(target)
    runs["stream"].append(seconds)
    _log(
        f"  (b) {target.dialect} one process {runs['one_process'][0]:.2f} s, "
        f"stream only {seconds:.2f} s ({rows:,} rows)"
    )
    per_event_us = await hash_only(target, min(events, 100_000))
    median = {kind: statistics.median(values) for kind, values in runs.items()}
    return {
        "events": events,
        "runs_s": runs,
        "median_s": median,
        "verify_events_per_s": events / median["verify"],
        "verify_at_1m_s": median["verify"] * REFERENCE_EVENTS / events,
        "extrapolated": events != REFERENCE_EVENTS,
        "walk_us_per_event": per_event_us,
        "walk_s_for_all": per_event_us * events / 1e6,
        "result": outcome,
    }


# --- (c) pages -----------------------------------------------------------------------------
def _page_query(filters: EventFilter, before: str | None) -> Any:
    """The statement `list_events` runs (for EXPLAIN)."""
    query = tenant_scope(select(AuditEvent), AuditEvent, None)
    query = filters.apply(query).order_by(AuditEvent.id.desc()).limit(50)
    return query.where(AuditEvent.id < before) if before is not None else query


async def explain(target: Target, filters: EventFilter, before: str | None) -> list[str]:
    """The plan of one page query."""
    statement = _page_query(filters, before)
    async with target.db.engine.connect() as connection:
        compiled = str(
            statement.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
        )
        prefix = "EXPLAIN QUERY PLAN " if target.dialect == "sqlite" else "EXPLAIN ANALYZE "
        rows = (await connection.exec_driver_sql(prefix + compiled)).all()
    return [" | ".join(str(v) for v in row) for row in rows]


async def measure_pages(
    target: Target, workload: Workload, events: int, samples: int, show_plans: bool
) -> dict[str, Any]:
    """`samples` timed pages of each kind, alternating kinds, after 3 unmeasured of each."""
    rng = random.Random(7)
    back = int(events * 0.9)
    low = max(1, events - back - samples * 50)
    seqs = [min(events, low + rng.randrange(samples * 100)) for _ in range(samples + 3)]
    async with target.db.session() as session:
        ids = dict(
            (
                await session.execute(
                    select(AuditEvent.seq, AuditEvent.id).where(AuditEvent.seq.in_(seqs))
                )
            ).all()
        )
    cursors = [ids[seq] for seq in seqs]
    timings: dict[str, list[float]] = {kind: [] for kind in PAGE_KINDS}
    rows: dict[str, list[int]] = {kind: [] for kind in PAGE_KINDS}
    plans: dict[str, list[str]] = {}
    for index in range(samples + 3):
        tenant = rng.choice(workload.tenants)
        prefix = rng.choice(RESOURCES) + "."
        filtered = EventFilter(action=prefix, tenant=tenant)
        cases: dict[str, tuple[EventFilter, str | None]] = {
            "first_filtered": (filtered, None),
            "deep": (EventFilter(), cursors[index]),
            "deep_filtered": (filtered, cursors[index]),
        }
        for kind, (filters, before) in cases.items():
            started = time.perf_counter()
            async with target.db.session() as session:
                page = await list_events(session, None, filters, limit=50, before=before)
            elapsed = time.perf_counter() - started
            if index >= 3:
                timings[kind].append(elapsed * 1000)
                rows[kind].append(len(page))
            if show_plans and index == 3:
                plans[kind] = await explain(target, filters, before)
    summary = {
        kind: {
            "p50_ms": _pick(timings[kind], 0.50),
            "p95_ms": _pick(timings[kind], 0.95),
            "max_ms": max(timings[kind]),
            "mean_rows": statistics.mean(rows[kind]),
        }
        for kind in PAGE_KINDS
    }
    return {"events": events, "samples": samples, "back": back, "summary": summary, "plans": plans}


# --- driver --------------------------------------------------------------------------------
async def run_dialect(dialect: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    workload = Workload()
    phases: dict[str, float] = {}
    started = time.monotonic()
    async with open_target(dialect, workdir / dialect) as target:
        _log(f"{dialect}: (a) appending ...")
        append = await measure_append(target, workload, args)
        phases["a"] = time.monotonic() - started
        _log(f"{dialect}: (b) generating {args.events:,} events ...")
        made = await generate(target, workload, args.events)
        phases["b_generate"] = time.monotonic() - started - sum(phases.values())
        checked = await measure_verify(target, args.events, args.verify_rounds)
        phases["b_verify"] = time.monotonic() - started - sum(phases.values())
        _log(f"{dialect}: (c) pages ...")
        pages = await measure_pages(target, workload, args.events, args.samples, args.plans)
        phases["c"] = time.monotonic() - started - sum(phases.values())
        where = target.where
        async with target.db.session() as session:
            server = str(
                await session.scalar(
                    text(
                        "SELECT sqlite_version()" if dialect == "sqlite" else "SHOW server_version"
                    )
                )
            )
    return {
        "dialect": dialect,
        "server": server,
        "where": where,
        "append": append,
        "generate": made,
        "verify": checked,
        "pages": pages,
        "phase_seconds": {k: round(v, 1) for k, v in phases.items()},
    }


async def run_all(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for dialect in args.dialects:
        if dialect == "postgresql" and (problem := await postgres_problem()):
            _log(f"postgresql skipped: {problem}")
            results[dialect] = {"skipped": problem}
            continue
        results[dialect] = await run_dialect(dialect, args, workdir)
    return results


def _verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def print_dialect(result: dict[str, Any], args: argparse.Namespace) -> None:
    name = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[result["dialect"]]
    if "skipped" in result:
        print(f"\n== {name}: skipped ({result['skipped']})")
        return
    took = ", ".join(f"{k} {v:g}" for k, v in result["phase_seconds"].items())
    print(f"\n== {name} {result['server']} ({result['where']}; seconds per phase: {took})")
    append = result["append"]
    print(
        f"(a) appended events/s, one event per transaction, {args.rounds} round(s) of "
        f"{append['duration_s']:g} s; plain = Core INSERT of the same rows, no chain"
    )
    print(
        f"  {'run':<22}{'plain ev/s':>11}{'audit ev/s':>11}{'audit/plain':>12}"
        f"{'CPU µs/ev plain':>16}{'audit':>7}{'drain s':>9}{'ev/seal()':>10}"
    )
    by_key = {(s["writers"], s["kind"], s["round"]): s for s in append["samples"]}
    for writers in WRITERS:
        for rnd in range(1, args.rounds + 1):
            plain, audit = by_key[writers, "plain", rnd], by_key[writers, "audit", rnd]
            ratio = audit["events_per_s"] / plain["events_per_s"]
            print(
                f"  {f'{writers} writer(s) #{rnd}':<22}{plain['events_per_s']:>11.1f}"
                f"{audit['events_per_s']:>11.1f}{ratio:>12.3f}{plain['cpu_us_per_event']:>16.0f}"
                f"{audit['cpu_us_per_event']:>7.0f}{audit['drain_s']:>9.2f}"
                f"{audit['events_per_seal_call']:>10.1f}"
            )
        summary = append["summary"][str(writers)]
        median, cpu = summary["median_events_per_s"], summary["median_cpu_us_per_event"]
        print(
            f"  {f'{writers} writer(s) median':<22}{median['plain']:>11.1f}{median['audit']:>11.1f}"
            f"{summary['ratio']:>12.3f}{cpu['plain']:>16.0f}{cpu['audit']:>7.0f}"
            f"{summary['drain_s_max']:>9.2f}{summary['events_per_seal_call']:>10.1f}"
        )
        print(
            f"  {'':<22}audit/plain {summary['ratio']:.3f} "
            f"{_verdict(summary['ratio'] >= TARGET_APPEND_RATIO)} target >= "
            f"{TARGET_APPEND_RATIO} (per-round ratios' median {summary['paired_ratio_median']:.3f})"
            f"; all sealed after every run: {'yes' if summary['all_sealed'] else 'NO'} (drain "
            f"max {summary['drain_s_max']:.2f} s; passes every {SEAL_INTERVAL:g} s); sealer "
            f"busy {summary['sealer_busy_share']:.0%} of the time, largest seal() batch "
            f"{summary['largest_seal_batch']}"
        )
    made, checked = result["generate"], result["verify"]
    label = "EXTRAPOLATED to 1,000,000 (linear) " if checked["extrapolated"] else ""
    outcome = checked["result"]
    print(
        f"(b) verify() of {checked['events']:,} events ({outcome['checkpoints']} checkpoints, "
        f"ok={outcome['ok']}, checked {outcome['checked']:,}, unsealed {outcome['unsealed']})"
    )
    runs = " ".join(f"{v:.2f}" for v in checked["runs_s"]["verify"])
    median = checked["median_s"]
    print(
        f"  verify: median {median['verify']:.2f} s ({runs}); "
        f"{checked['verify_events_per_s']:,.0f} events/s"
    )
    at_1m = checked["verify_at_1m_s"]
    print(f"  {label}1,000,000 events: {at_1m:.2f} s  {_verdict(at_1m < TARGET_VERIFY_S)} < 10 s")
    hashing = checked["walk_s_for_all"]
    print(
        f"  for scale: in one process (workers=1) {median['one_process']:.2f} s "
        f"({median['one_process'] / median['verify']:.2f} of verify); its raw query streamed "
        f"without hashing {median['stream']:.2f} s ({median['stream'] / median['verify']:.2f});"
        f" the walk alone {checked['walk_us_per_event']:.2f} µs/event = {hashing:.2f} s "
        f"({hashing / median['verify']:.2f})"
    )
    print(
        f"  generation: {made['generated']:,} events in {made['seconds']:.1f} s (draw and "
        f"chain {made['build_and_hash_s']:.1f} s, insert {made['insert_s']:.1f} s, checkpoints "
        f"{made['checkpoint_s']:.1f} s), plus {made['from_a']:,} recorded by (a)"
        + ("; ANALYZE run" if made["analyzed"] else "")
    )
    pages = result["pages"]
    scale = "" if pages["events"] == REFERENCE_EVENTS else " (NOT extrapolated)"
    print(
        f"(c) list_events, limit 50, {pages['samples']} samples each over "
        f"{pages['events']:,} events{scale}; deep cursor ~{pages['back']:,} events back"
    )
    print(f"  {'page':<44}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}{'rows':>7}")
    for kind, title in PAGE_KINDS.items():
        s = pages["summary"][kind]
        print(
            f"  {title:<44}{s['p50_ms']:>8.2f}{s['p95_ms']:>8.2f}{s['max_ms']:>8.2f}"
            f"{s['mean_rows']:>7.1f}  {_verdict(s['p95_ms'] < TARGET_PAGE_MS)} p95 < 50 ms"
        )
    for kind, plan in pages["plans"].items():
        print(f"  plan of {kind}:")
        for line in plan:
            print(f"    {line}")


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(coro)  # type: ignore[no-any-return, unused-ignore]
    return asyncio.run(coro)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 events, short rounds")
    parser.add_argument("--dialects", default="sqlite,postgresql", help="comma-separated")
    parser.add_argument("--rounds", type=int, help="(a) rounds per writer count (5)")
    parser.add_argument("--duration", type=float, help="(a) seconds per run (5)")
    parser.add_argument("--events", type=int, help="(b)/(c) events in the chain (1,000,000)")
    parser.add_argument("--verify-rounds", type=int, help="(b) verify() runs (2)")
    parser.add_argument("--samples", type=int, default=50, help="(c) pages timed per kind")
    parser.add_argument("--plans", action="store_true", help="(c) print the query plans")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (SQLite file)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.dialects = [d.strip() for d in args.dialects.split(",") if d.strip()]
    if not set(args.dialects) <= {"sqlite", "postgresql"}:
        parser.error("--dialects takes sqlite and/or postgresql")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)

    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-audit-"))
    for name in [k for k in os.environ if k.startswith("KEEL_")]:
        del os.environ[name]
    os.environ["KEEL_CONFIG_FILE"] = str(workdir / "no-keel.toml")  # ignore any keel.toml
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        results = _run(run_all(args, workdir))
    finally:
        if args.keep:
            print(f"temp dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    packages = ("keel-server", "sqlalchemy", "aiosqlite", "psycopg", "orjson", "uvloop")
    settings = {
        "python": sys.version.split()[0],
        "sqlite": __import__("sqlite3").sqlite_version,
        "versions": {pkg: version(pkg) for pkg in packages},
        "cpus": os.cpu_count(),
        "seconds": round(time.monotonic() - started, 1),
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **{k: v for k, v in vars(args).items() if k not in ("json", "keep")},
    }
    if args.json:
        print(json.dumps({"settings": settings, "dialects": results}, indent=2, default=str))
        return 0
    mode = "QUICK (100,000-event chain unless --events)" if args.quick else "full"
    print(f"Keel audit trail cost  |  {mode}  |  {settings['seconds']:g} s")
    print("  " + ", ".join(f"{k} {v}" for k, v in settings["versions"].items()))
    before, after = settings["loadavg_1min"]
    print(
        f"  python {settings['python']}, SQLite {settings['sqlite']}, {settings['cpus']} CPUs, "
        f"load average {before:g} at start, {after:g} at end"
    )
    for result in results.values():
        print_dialect(result, args)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; temp dir and schema removed", file=sys.stderr)
        sys.exit(130)
