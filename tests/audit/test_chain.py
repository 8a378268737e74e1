"""The audit trail: atomic with the change, gap-free under concurrency, append-only, and every
kind of tampering detected and pinpointed."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from keel import Config
from keel.audit import Actor, record
from keel.audit.models import AuditCheckpoint, AuditEvent
from keel.audit.service import checkpoint, seal_all, verify
from keel.core.database import Database
from keel.core.keyring import Keyring, load_master_key
from keel.core.migrate import upgrade

ACTOR = Actor("user", "u1", "ada@example.com", "t1", client_ip="10.0.0.1")


@pytest.fixture
async def db(migrated_db: Database) -> Database:
    return migrated_db


@pytest.fixture
async def ring(db: Database) -> Keyring:
    keyring = Keyring(load_master_key(db.config))
    await keyring.load(db)
    return keyring


async def _events(db: Database, count: int, *, prefix: str = "thing") -> None:
    async with db.transaction() as session:
        for index in range(count):
            await record(
                session,
                f"{prefix}.update",
                resource=(prefix, str(index)),
                before={"n": index},
                after={"n": index + 1},
                actor=ACTOR,
            )


async def _count(db: Database) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


async def test_an_event_exists_iff_its_transaction_commits(db: Database) -> None:
    """Commit: the event is there. Roll back: neither the change nor the event."""
    await _events(db, 1)
    assert await _count(db) == 1

    async def failing_change() -> None:
        async with db.transaction() as session:
            await record(session, "thing.delete", resource=("thing", "x"), actor=ACTOR)
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await failing_change()
    assert await _count(db) == 1


async def test_secret_fields_are_never_stored(db: Database) -> None:
    """Secret-looking fields keep only the fact that they changed."""
    async with db.transaction() as session:
        await record(
            session,
            "user.update",
            before={"password_hash": "old-hash-123", "name": "a", "api_token": "tok-1"},
            after={"password_hash": "new-hash-456", "name": "b", "api_token": "tok-2", "pin": "9"},
            secret=["pin"],
            actor=ACTOR,
        )
    async with db.session() as session:
        row = await session.scalar(select(AuditEvent))
    assert row is not None and row.changes == {
        "api_token": "[redacted]",
        "name": ["a", "b"],
        "password_hash": "[redacted]",
        "pin": "[redacted]",
    }
    async with db.engine.connect() as connection:
        dump = str((await connection.execute(text("SELECT * FROM keel_audit_events"))).all())
    for secret in ("old-hash-123", "new-hash-456", "tok-1", "tok-2", "'9'"):
        assert secret not in dump


async def test_concurrent_writers_make_a_gap_free_chain(db: Database, ring: Keyring) -> None:
    """Many tasks on two engines write while sealers run in parallel: every event gets a
    seq, with no gap and no duplicate, and the chain verifies."""
    other = Database(db.config)
    try:

        async def writer(database: Database, n: int) -> None:
            for _ in range(10):
                await _events(database, 2, prefix=f"w{n}")

        async def sealer(database: Database) -> None:
            for _ in range(20):
                await seal_all(database)
                await asyncio.sleep(0.01)

        await asyncio.gather(
            *(writer(db if n % 2 else other, n) for n in range(16)),
            sealer(db),
            sealer(other),
        )
        await seal_all(db)
    finally:
        await other.dispose()
    async with db.session() as session:
        seqs = list(await session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))
    assert seqs == list(range(1, 321))
    await checkpoint(db, ring, force=True)
    result = await verify(db, ring=ring)
    assert result.ok, result
    assert result.checked == 320 and result.checkpoints == 1


async def test_the_sealer_hashes_what_the_typed_reference_hashes(db: Database) -> None:
    """The sealer hashes raw rows (JSON as text, times as stored); every hash equals
    `chain_hash` over the typed row, as chains sealed before were hashed, whatever the
    content: no diff, nested and unsorted keys, unicode, floats, and numbers JSON cannot
    carry (kept as text)."""
    from keel.audit.models import CONTENT_COLUMNS
    from keel.audit.service import chain_hash

    odd = {
        "zeta": {"b": [1.5, -0.0, 1e-7], "a": None},
        "name": 'Zoë \u2603 "quoted" \\ \n tab\t 😀',
        "big": 2**70,
        "nan": float("nan"),
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    async with db.transaction() as session:
        await record(session, "thing.touch", actor=ACTOR)
        await record(session, "thing.update", before={}, after=odd, reason="ünï", actor=ACTOR)
        await record(session, "thing.update", before=odd, after={"name": None}, actor=ACTOR)
    assert await seal_all(db) == 3
    async with db.session() as session:
        rows = (
            await session.execute(
                select(
                    *[getattr(AuditEvent, c) for c in CONTENT_COLUMNS],
                    AuditEvent.seq,
                    AuditEvent.prev_hash,
                    AuditEvent.hash,
                ).order_by(AuditEvent.seq)
            )
        ).all()
    assert [row.seq for row in rows] == [1, 2, 3]
    for row in rows:
        assert chain_hash(row.prev_hash, row.seq, row._mapping) == row.hash
    changes = rows[1].changes
    assert changes["big"] == [None, str(2**70)] and changes["nan"] == [None, "nan"]
    assert (await verify(db, ring=None)).ok


async def test_the_sealer_loop_seals_and_signs_on_its_cadence(db: Database, ring: Keyring) -> None:
    """A pass seals everything pending and signs the head once; the next pass with new
    events seals them without signing (a minute has not passed, nor 10,000 events)."""
    from keel.audit.sealer import Sealer

    async def keyring() -> Keyring:
        return ring

    sealer = Sealer(db, keyring, batch=7)
    await _events(db, 20)
    assert await sealer.step() == 20
    assert sealer.calls == 3 and sealer.largest == 7
    await _events(db, 5)
    assert await sealer.step() == 5
    async with db.session() as session:
        signed = list(await session.scalars(select(AuditCheckpoint.seq)))
    assert signed == [20]
    assert await sealer.drain() == 0
    result = await verify(db, ring=ring)
    assert result.ok and result.checked == 25 and result.checkpoints == 1


@pytest.mark.parametrize("statement", ["UPDATE", "DELETE"])
async def test_update_and_delete_are_rejected(db: Database, statement: str) -> None:
    """The table is append-only: a sealed event can be neither changed nor deleted, on
    PostgreSQL and SQLite alike (triggers)."""
    await _events(db, 2)
    await seal_all(db)
    sql = {
        "UPDATE": "UPDATE keel_audit_events SET reason = 'edited' WHERE seq = 1",
        "DELETE": "DELETE FROM keel_audit_events WHERE seq = 2",
    }[statement]
    with pytest.raises((DBAPIError, IntegrityError), match="append-only"):
        async with db.transaction() as session:
            await session.execute(text(sql))
    if db.dialect == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.transaction() as session:
                await session.execute(text("TRUNCATE keel_audit_events"))
    assert await _count(db) == 2


async def test_an_unsealed_event_cannot_be_rewritten_either(db: Database) -> None:
    """Only the sealer's transition (setting seq and hash) is allowed; content never moves."""
    await _events(db, 1)
    with pytest.raises((DBAPIError, IntegrityError), match="append-only"):
        async with db.transaction() as session:
            await session.execute(text("UPDATE keel_audit_events SET action = 'x.y'"))


# --- tampering: what a database superuser could do, and how verify pinpoints it -------------


async def _tamper(db: Database, *statements: str) -> None:
    """Run `statements` with the append-only triggers out of the way (as an attacker with
    full database access would)."""
    async with db.engine.begin() as connection:
        if db.dialect == "postgresql":
            await connection.execute(text("SET LOCAL session_replication_role = replica"))
            for statement in statements:
                await connection.execute(text(statement))
        else:
            triggers = (
                await connection.execute(
                    text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
                )
            ).all()
            for name, _sql in triggers:
                await connection.execute(text(f'DROP TRIGGER "{name}"'))
            for statement in statements:
                await connection.execute(text(statement))
            for _name, sql in triggers:
                await connection.execute(text(sql))


@pytest.fixture
async def chain(db: Database, ring: Keyring) -> Database:
    """A sealed chain of 50 events with a checkpoint at its head."""
    await _events(db, 50)
    await seal_all(db)
    await checkpoint(db, ring, force=True)
    assert (await verify(db, ring=ring)).ok
    return db


async def _broken(db: Database, ring: Keyring) -> tuple[int | None, str | None]:
    """Where and why verify says the chain breaks; the same whether it walks the chain in
    one process or split in two at seq 26 (the second half in a helper process)."""
    result = await verify(db, ring=ring)
    split = await verify(db, ring=ring, workers=2)
    assert not result.ok
    assert split.as_dict() == result.as_dict()
    return result.broken_seq, result.problem


async def test_one_changed_byte_is_pinpointed(chain: Database, ring: Keyring) -> None:
    """Changing one character of one event's content breaks the chain exactly there."""
    await _tamper(
        chain, "UPDATE keel_audit_events SET actor_label = 'bda@example.com' WHERE seq = 17"
    )
    assert await _broken(chain, ring) == (17, "its content does not match its hash")


async def test_a_value_of_a_foreign_type_is_pinpointed(chain: Database, ring: Keyring) -> None:
    """Stored values no event could hold (bytes in a text column on SQLite, a number beyond
    any float in the JSON on PostgreSQL) are reported as a mismatch, not a crash."""
    statement = (
        "UPDATE keel_audit_events SET actor_label = X'00ff' WHERE seq = 12"
        if chain.dialect == "sqlite"
        else """UPDATE keel_audit_events SET changes = '{"n": [1e999, 2]}' WHERE seq = 12"""
    )
    await _tamper(chain, statement)
    assert await _broken(chain, ring) == (12, "its content does not match its hash")


async def test_a_deleted_event_is_pinpointed(chain: Database, ring: Keyring) -> None:
    """A deleted event shows as a gap at its seq."""
    await _tamper(chain, "DELETE FROM keel_audit_events WHERE seq = 23")
    assert await _broken(chain, ring) == (23, "event 23 is missing")


async def test_two_swapped_events_are_pinpointed(chain: Database, ring: Keyring) -> None:
    """Swapping the seq (and hashes) of two events breaks the chain at the first of them."""
    await _tamper(
        chain,
        "UPDATE keel_audit_events SET seq = -30 WHERE seq = 30",
        "UPDATE keel_audit_events SET seq = 30 WHERE seq = 31",
        "UPDATE keel_audit_events SET seq = 31 WHERE seq = -30",
    )
    seq, _problem = await _broken(chain, ring)
    assert seq == 30


async def test_a_truncated_tail_is_detected(chain: Database, ring: Keyring) -> None:
    """Deleting the newest events leaves a signed checkpoint the chain no longer reaches."""
    await _tamper(chain, "DELETE FROM keel_audit_events WHERE seq > 45")
    seq, problem = await _broken(chain, ring)
    assert seq == 46 and problem is not None and "checkpoint 50" in problem


async def test_a_rewritten_chain_fails_its_signed_checkpoint(
    chain: Database, ring: Keyring
) -> None:
    """Rewriting an event and re-hashing everything after it (a consistent forgery) is
    caught by the checkpoint signature, which the forger cannot redo without the master key."""
    from keel.audit.models import CONTENT_COLUMNS
    from keel.audit.service import chain_hash

    await _tamper(chain, "UPDATE keel_audit_events SET reason = 'nothing to see' WHERE seq = 5")
    async with chain.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(*[getattr(AuditEvent, c) for c in CONTENT_COLUMNS], AuditEvent.seq)
                .where(AuditEvent.seq >= 5)
                .order_by(AuditEvent.seq)
            )
        ).all()
        prev = (
            await connection.execute(select(AuditEvent.hash).where(AuditEvent.seq == 4))
        ).scalar_one()
    statements = []
    for row in rows:
        digest = chain_hash(prev, row.seq, row._mapping)
        statements.append(
            f"UPDATE keel_audit_events SET prev_hash = '{prev}', hash = '{digest}' "
            f"WHERE seq = {row.seq}"
        )
        prev = digest
    await _tamper(chain, *statements)
    seq, problem = await _broken(chain, ring)
    assert seq == 50 and problem == "the chain does not pass through the signed checkpoint"


async def test_a_forged_checkpoint_signature_is_refused(chain: Database, ring: Keyring) -> None:
    """A checkpoint whose signature is not the audit key's fails verification."""
    async with chain.engine.begin() as connection:
        await connection.execute(
            text("UPDATE keel_audit_checkpoints SET signature = :sig"), {"sig": "00" * 64}
        )
    assert await _broken(chain, ring) == (50, "the checkpoint's signature is not valid")


async def test_a_broken_link_where_split_ranges_meet_is_pinpointed(
    chain: Database, ring: Keyring
) -> None:
    """The first event of the helper's range, re-hashed over a forged prev_hash (so it is
    self-consistent), breaks the link exactly there, and so does the last event of the first
    range going missing."""
    from keel.audit.models import CONTENT_COLUMNS
    from keel.audit.service import chain_hash

    async with chain.engine.connect() as connection:
        row = (
            await connection.execute(
                select(*[getattr(AuditEvent, c) for c in CONTENT_COLUMNS]).where(
                    AuditEvent.seq == 26
                )
            )
        ).one()
    forged = "f" * 64
    digest = chain_hash(forged, 26, row._mapping)
    await _tamper(
        chain,
        f"UPDATE keel_audit_events SET prev_hash = '{forged}', hash = '{digest}' WHERE seq = 26",
    )
    assert await _broken(chain, ring) == (26, "its prev_hash does not link to the event before")
    await _tamper(chain, "DELETE FROM keel_audit_events WHERE seq = 25")
    assert await _broken(chain, ring) == (25, "event 25 is missing")


async def test_a_split_verification_runs_its_helper(chain: Database, ring: Keyring) -> None:
    """The helper process checks its range on its own and reports what the join needs."""
    from keel.audit.verification import _dsn, _Helper

    helper = _Helper(26, 50)
    orders = {"dialect": chain.dialect, "dsn": _dsn(chain), "batch": 7, "checkpoints": [50]}
    outcome = await helper.run(orders)
    assert outcome is not None
    assert outcome["checked"] == 25 and outcome["broken"] is None and helper.checked == 25
    async with chain.session() as session:
        hashes = dict((await session.execute(select(AuditEvent.seq, AuditEvent.hash))).all())
    assert outcome["first_read"] and outcome["first_prev"] == hashes[25]
    assert outcome["last"] == hashes[50] and outcome["hashes"] == {"50": hashes[50]}
    seen: list[tuple[int, int]] = []
    result = await verify(
        chain, ring=ring, workers=3, batch=4, progress=lambda *done: seen.append(done)
    )
    assert result.ok and result.checked == 50 and result.checkpoints == 1, result
    assert seen[-1] == (50, 50)


async def test_a_split_verification_without_its_helper_checks_everything_here(
    chain: Database, ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the helper process cannot start, its range is checked in this process: the
    outcome is the same, tampering included."""
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    result = await verify(chain, ring=ring, workers=2)
    assert result.ok and result.checked == 50 and result.checkpoints == 1, result
    await _tamper(chain, "UPDATE keel_audit_events SET reason = 'edited' WHERE seq = 40")
    assert await _broken(chain, ring) == (40, "its content does not match its hash")


async def test_verify_from_a_seq(chain: Database, ring: Keyring) -> None:
    """`--from` checks the chain from that event on."""
    result = await verify(chain, ring=ring, from_seq=40)
    assert result.ok and result.checked == 11 and result.first_seq == 40


async def test_pruning_keeps_the_rest_verifiable(chain: Database, ring: Keyring) -> None:
    """Pruning through seq 20 (the only deleting path) leaves 21.. verifiable from the anchor
    and records itself."""
    from keel.audit.service import prune

    assert await prune(chain, through_seq=20, reason="test retention") == 20
    await seal_all(chain)
    result = await verify(chain, ring=ring)
    assert result.ok, result
    assert result.first_seq == 21 and result.checked == 31  # 30 left + the audit.prune event
    async with chain.session() as session:
        actions = list(await session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))
    assert actions[-1] == "audit.prune"


async def test_concurrent_migrations_and_sealers_on_a_fresh_database(config: Config) -> None:
    """A fresh database, migrated and sealed by two processes' worth of engines at once."""
    first, second = Database(config), Database(config)
    try:
        await asyncio.gather(upgrade(first), upgrade(second))
        await _events(first, 3)
        counts: list[Any] = await asyncio.gather(seal_all(first), seal_all(second))
        assert sum(counts) == 3
    finally:
        await first.dispose()
        await second.dispose()
    checkpoints = select(func.count()).select_from(AuditCheckpoint)
    database = Database(config)
    try:
        async with database.session() as session:
            assert await session.scalar(checkpoints) == 0
    finally:
        await database.dispose()
