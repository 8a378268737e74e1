"""The hash chain: what an event's hash covers, sealing unsealed events onto the chain, and
the signed checkpoints.

`seal()` (run by every server's sealer, serialised by a lock) gives unsealed rows the next
`seq` and their hash in visibility order. It is the only code that updates an event, and it
changes nothing but the chain fields (the append-only triggers enforce that).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import TextClause, bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.models import CONTENT_COLUMNS, AuditAnchor, AuditCheckpoint, AuditEvent, AuditKey
from keel.audit.walk import HASHED, ID, digest, select_list, time_reader
from keel.core.database import Database, UTCDateTime
from keel.core.ids import new_id
from keel.core.keyring import Keyring

__all__ = [
    "CHECKPOINT_EVERY",
    "CHECKPOINT_INTERVAL",
    "GENESIS",
    "SEAL_BATCH",
    "canonical",
    "chain_hash",
    "checkpoint",
    "seal",
    "seal_all",
]

GENESIS = "0" * 64
SEAL_BATCH = 1000
CHECKPOINT_EVERY = 10_000
CHECKPOINT_INTERVAL = 60.0
_SEAL_LOCK = 0x6B65656C_61756474  # "keelaudt"

assert tuple(sorted((*CONTENT_COLUMNS, "seq"))) == HASHED, "walk.HASHED is out of date"


def _value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def canonical(seq: int, row: Any) -> bytes:
    """The bytes an event's hash covers: its content and its position (`row`: a mapping of
    the content columns, typed as the model reads them)."""
    data = {name: _value(row[name]) for name in CONTENT_COLUMNS}
    data["seq"] = seq
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, seq: int, row: Any) -> str:
    """`SHA-256(prev_hash ‖ canonical(event))`, hex. The sealer and `verify()` compute the
    same from raw rows (`keel.audit.walk.digest`); this is the reference for typed values."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(seq, row)).hexdigest()


# --- sealing -----------------------------------------------------------------------------------


async def lock_chain(session: AsyncSession) -> None:
    """Take the sealing lock for the rest of the transaction (on SQLite the write
    transaction is the lock)."""
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SEAL_LOCK})


async def head(session: AsyncSession) -> tuple[int, str]:
    """The last sealed event's seq and hash (or the anchor's, or the genesis)."""
    # unscoped: the chain spans every tenant.
    row = (
        await session.execute(
            select(AuditEvent.seq, AuditEvent.hash)
            .where(AuditEvent.seq.is_not(None))
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        )
    ).first()
    if row is not None and row[0] is not None and row[1] is not None:
        return int(row[0]), str(row[1])
    anchor = await session.get(AuditAnchor, 1)
    return (anchor.seq, anchor.hash) if anchor is not None else (0, GENESIS)


def _statements(dialect: str) -> tuple[TextClause, TextClause]:
    """The batch read and the chain write, built once per dialect."""
    # SQLite's planner would take the unique `seq` index and sort every unsealed row by id
    # (a pass then costs as much as the backlog is long); the partial index is in id order.
    hint = " INDEXED BY ix_keel_audit_events_unsealed" if dialect == "sqlite" else ""
    pending = text(
        f"SELECT {select_list(dialect)} FROM keel_audit_events{hint} "  # noqa: S608 - constant columns
        "WHERE seq IS NULL ORDER BY id LIMIT :batch"
    )
    if dialect == "postgresql":
        # One statement for the whole batch: the rows' new chain fields arrive as arrays.
        write = text(
            "UPDATE keel_audit_events AS e SET seq = v.seq, prev_hash = v.prev_hash, "
            "hash = v.hash, sealed_at = :sealed_at "
            "FROM unnest(CAST(:ids AS text[]), CAST(:seqs AS bigint[]), "
            "CAST(:prevs AS text[]), CAST(:hashes AS text[])) AS v(id, seq, prev_hash, hash) "
            "WHERE e.id = v.id AND e.seq IS NULL"
        )
    else:
        write = text(
            "UPDATE keel_audit_events SET seq = :seq, prev_hash = :prev_hash, hash = :hash, "
            "sealed_at = :sealed_at WHERE id = :id AND seq IS NULL"
        )
    return pending, write.bindparams(bindparam("sealed_at", type_=UTCDateTime()))


_STATEMENTS = {dialect: _statements(dialect) for dialect in ("postgresql", "sqlite")}


async def _seal_batch(session: AsyncSession, dialect: str, batch: int) -> int:
    pending, write = _STATEMENTS[dialect]
    rows = (await session.execute(pending, {"batch": batch})).all()
    if not rows:
        return 0
    seq, prev = await head(session)
    time = time_reader(dialect)
    now = datetime.now(UTC)
    ids, seqs, prevs, hashes = [], [], [], []
    for row in rows:
        seq += 1
        digest_ = digest(prev, row, time, seq)
        ids.append(row[ID])
        seqs.append(seq)
        prevs.append(prev)
        hashes.append(digest_)
        prev = digest_
    values: Any
    if dialect == "postgresql":
        values = {"ids": ids, "seqs": seqs, "prevs": prevs, "hashes": hashes, "sealed_at": now}
    else:
        values = [
            {"id": i, "seq": s, "prev_hash": p, "hash": h, "sealed_at": now}
            for i, s, p, h in zip(ids, seqs, prevs, hashes, strict=True)
        ]
    result: Any = await session.execute(write, values)
    if result.rowcount != len(rows):  # cannot happen under the lock: never leave a gap
        raise RuntimeError(f"sealed {result.rowcount} of {len(rows)} events; rolled back")
    return len(rows)


async def seal(db: Database, *, batch: int = SEAL_BATCH) -> int:
    """Chain up to `batch` unsealed events after the head; returns how many were sealed."""
    # unscoped: the chain spans every tenant.
    dialect = db.dialect
    if dialect == "sqlite":
        # A read first, so an idle sealer never takes the (database-wide) write lock.
        async with db.session() as session:
            pending = await session.scalar(
                select(AuditEvent.id).where(AuditEvent.seq.is_(None)).limit(1)
            )
        if pending is None:
            return 0
    async with db.transaction() as session:
        await lock_chain(session)
        return await _seal_batch(session, dialect, batch)


async def seal_all(db: Database) -> int:
    """Seal until nothing is left unsealed."""
    total = 0
    while sealed := await seal(db):
        total += sealed
    return total


# --- checkpoints -------------------------------------------------------------------------------


async def _signing_key(db: Database, ring: Keyring) -> tuple[str, Ed25519PrivateKey]:
    async with db.transaction() as session:
        await lock_chain(session)
        row = await session.scalar(select(AuditKey).order_by(AuditKey.created_at.desc()).limit(1))
        if row is None:
            key = Ed25519PrivateKey.generate()
            kid = "a" + new_id().replace("-", "")[:16]
            raw = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            row = AuditKey(
                kid=kid,
                private_key=ring.encrypt(raw, context=b"audit-key:" + kid.encode()),
                public_key=key.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                ),
                created_at=datetime.now(UTC),
            )
            session.add(row)
            return kid, key
    raw = ring.decrypt(row.private_key, context=b"audit-key:" + row.kid.encode())
    return row.kid, Ed25519PrivateKey.from_private_bytes(raw)


def statement(seq: int, digest_: str) -> bytes:
    """What a checkpoint signs."""
    return f"keel-audit-checkpoint:{seq}:{digest_}".encode("ascii")


async def checkpoint(db: Database, ring: Keyring, *, force: bool = False) -> AuditCheckpoint | None:
    """Sign the head if it moved since the last checkpoint (and, unless `force`, the last one
    is older than `CHECKPOINT_INTERVAL` or `CHECKPOINT_EVERY` events behind)."""
    async with db.session() as session:
        seq, hashed = await head(session)
        last = await session.scalar(
            select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1)
        )
    if seq == 0 or (last is not None and last.seq >= seq):
        return None
    now = datetime.now(UTC)
    if not force and last is not None:
        age = (now - last.created_at).total_seconds()
        if age < CHECKPOINT_INTERVAL and seq - last.seq < CHECKPOINT_EVERY:
            return None
    kid, key = await _signing_key(db, ring)
    row = AuditCheckpoint(
        seq=seq,
        hash=hashed,
        created_at=now,
        kid=kid,
        signature=key.sign(statement(seq, hashed)).hex(),
    )
    async with db.transaction() as session:
        if await session.get(AuditCheckpoint, seq) is None:
            session.add(row)
    return row
