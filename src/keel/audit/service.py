"""Recording, sealing, verifying, reading and pruning audit events.

`record()` adds an unsealed row in the caller's transaction. `seal()` (run by every server's
sealer, serialised by a lock) chains unsealed rows in visibility order. `verify()` re-hashes
the chain and checks the signed checkpoints.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Select, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.context import Actor, current_actor
from keel.audit.models import (
    CONTENT_COLUMNS,
    AuditAnchor,
    AuditCheckpoint,
    AuditEvent,
    AuditKey,
    AuditPruneFlag,
)
from keel.core.context import current_trace
from keel.core.database import Database
from keel.core.errors import ValidationFailed
from keel.core.ids import new_id
from keel.core.keyring import Keyring
from keel.core.principal import Principal, tenant_scope

__all__ = [
    "GENESIS",
    "OUTCOMES",
    "EventFilter",
    "Verification",
    "canonical",
    "checkpoint",
    "diff",
    "export_rows",
    "list_events",
    "prune",
    "record",
    "seal",
    "verify",
]

GENESIS = "0" * 64
OUTCOMES = ("success", "denied", "failed")
REDACTED = "[redacted]"
_SECRET_NAMES = frozenset({"password", "password_hash", "secret", "token", "private_key"})
_SECRET_SUFFIXES = ("_hash", "_secret", "_token", "_password")
_SEAL_LOCK = 0x6B65656C_61756474  # "keelaudt"
SEAL_BATCH = 1000
CHECKPOINT_EVERY = 10_000
CHECKPOINT_INTERVAL = 60.0


def _is_secret(name: str, extra: frozenset[str]) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_NAMES or lowered in extra or lowered.endswith(_SECRET_SUFFIXES)


def diff(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    secret: Sequence[str] = (),
) -> dict[str, Any] | None:
    """`{field: [before, after]}` for the fields that differ; secret fields become
    `"[redacted]"` (that they changed is kept, their values never are)."""
    before, after = before or {}, after or {}
    extra = frozenset(name.lower() for name in secret)
    changes: dict[str, Any] = {}
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new and (name in before) == (name in after):
            continue
        changes[name] = REDACTED if _is_secret(name, extra) else [_plain(old), _plain(new)]
    return changes or None


def _plain(value: Any) -> Any:
    """`value` as JSON can store it (times as ISO 8601 text)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [
            _plain(item)
            for item in (sorted(value) if isinstance(value, set | frozenset) else value)
        ]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)


async def record(
    session: AsyncSession,
    action: str,
    *,
    resource: tuple[str, str | None] | None = None,
    outcome: str = "success",
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    secret: Sequence[str] = (),
    reason: str | None = None,
    actor: Actor | None = None,
    tenant_id: str | None = None,
) -> AuditEvent:
    """Add an event to the caller's transaction (it exists iff the transaction commits).

    The actor defaults to the one bound for this request or command; `tenant_id` to the
    actor's tenant.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}")
    if "." not in action:
        raise ValueError("action must be resource.verb")
    who = actor or current_actor() or Actor("system", "system:unknown", "unattributed")
    trace = current_trace()
    event = AuditEvent(
        id=new_id(),
        recorded_at=datetime.now(UTC),
        actor_type=who.type,
        actor_id=who.id,
        actor_label=(who.label or "")[:320],
        origin=who.origin,
        tenant_id=tenant_id if tenant_id is not None else who.tenant_id,
        action=action[:100],
        resource_type=resource[0] if resource else None,
        resource_id=resource[1] if resource else None,
        outcome=outcome,
        changes=diff(before, after, secret=secret),
        reason=reason,
        trace_id=trace.trace_id if trace else None,
        span_id=trace.span_id if trace else None,
        client_ip=who.client_ip,
        user_agent=who.user_agent,
    )
    session.add(event)
    return event


def _value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def canonical(seq: int, row: Any) -> bytes:
    """The bytes an event's hash covers: its content and its position (`row`: a mapping of
    the content columns)."""
    data = {name: _value(row[name]) for name in CONTENT_COLUMNS}
    data["seq"] = seq
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, seq: int, row: Any) -> str:
    """`SHA-256(prev_hash ‖ canonical(event))`, hex."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(seq, row)).hexdigest()


# --- sealing -----------------------------------------------------------------------------------


async def _lock(session: AsyncSession) -> None:
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SEAL_LOCK})


async def _head(session: AsyncSession) -> tuple[int, str]:
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


_COLUMNS = [getattr(AuditEvent, name) for name in CONTENT_COLUMNS]


async def seal(db: Database, *, batch: int = SEAL_BATCH) -> int:
    """Chain up to `batch` unsealed events after the head; returns how many were sealed."""
    # unscoped: the chain spans every tenant.
    async with db.session() as session:
        # A read first, so an idle sealer never takes the write lock.
        pending = await session.scalar(
            select(AuditEvent.id).where(AuditEvent.seq.is_(None)).limit(1)
        )
    if pending is None:
        return 0
    async with db.transaction() as session:
        await _lock(session)
        seq, prev = await _head(session)
        rows = (
            await session.execute(
                select(*_COLUMNS)
                .where(AuditEvent.seq.is_(None))
                .order_by(AuditEvent.id)
                .limit(batch)
            )
        ).all()
        if not rows:
            return 0
        now = datetime.now(UTC)
        params = []
        for row in rows:
            seq += 1
            digest = chain_hash(prev, seq, row._mapping)
            params.append(
                {"id": row.id, "seq": seq, "prev_hash": prev, "hash": digest, "sealed_at": now}
            )
            prev = digest
        await session.execute(update(AuditEvent), params)
    return len(rows)


async def seal_all(db: Database) -> int:
    """Seal until nothing is left unsealed."""
    total = 0
    while sealed := await seal(db):
        total += sealed
    return total


# --- checkpoints -------------------------------------------------------------------------------


async def _signing_key(db: Database, ring: Keyring) -> tuple[str, Ed25519PrivateKey]:
    async with db.transaction() as session:
        await _lock(session)
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


def _statement(seq: int, digest: str) -> bytes:
    return f"keel-audit-checkpoint:{seq}:{digest}".encode("ascii")


async def checkpoint(db: Database, ring: Keyring, *, force: bool = False) -> AuditCheckpoint | None:
    """Sign the head if it moved since the last checkpoint (and, unless `force`, the last one
    is older than `CHECKPOINT_INTERVAL` or `CHECKPOINT_EVERY` events behind)."""
    async with db.session() as session:
        seq, digest = await _head(session)
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
        hash=digest,
        created_at=now,
        kid=kid,
        signature=key.sign(_statement(seq, digest)).hex(),
    )
    async with db.transaction() as session:
        if await session.get(AuditCheckpoint, seq) is None:
            session.add(row)
    return row


# --- verification ------------------------------------------------------------------------------


@dataclass
class Verification:
    """The outcome of `verify`."""

    ok: bool = True
    checked: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    broken_seq: int | None = None
    problem: str | None = None
    checkpoints: int = 0
    unsealed: int = 0
    details: list[str] = field(default_factory=list)

    def fail(self, seq: int | None, problem: str) -> Verification:
        if self.ok:
            self.ok, self.broken_seq, self.problem = False, seq, problem
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "broken_seq": self.broken_seq,
            "problem": self.problem,
            "checkpoints": self.checkpoints,
            "unsealed": self.unsealed,
        }


async def _public_keys(db: Database, ring: Keyring | None) -> dict[str, Ed25519PublicKey]:
    """The checkpoint keys. With the keyring, each public key is derived from its wrapped
    private key, so a key swapped into the table by someone without the master key fails."""
    async with db.session() as session:
        rows = list(await session.scalars(select(AuditKey)))
    keys: dict[str, Ed25519PublicKey] = {}
    for row in rows:
        if ring is not None:
            try:
                raw = ring.decrypt(row.private_key, context=b"audit-key:" + row.kid.encode())
                keys[row.kid] = Ed25519PrivateKey.from_private_bytes(raw).public_key()
            except Exception:  # noqa: BLE001, S112 - a key that does not open is not trusted
                continue
        else:
            keys[row.kid] = Ed25519PublicKey.from_public_bytes(row.public_key)
    return keys


class _Walk:
    """The running state of a chain walk."""

    def __init__(  # noqa: PLR0917 - the walk's whole starting state
        self,
        result: Verification,
        start: int,
        expected_prev: str | None,
        checkpoints: frozenset[int],
        total: int,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.result = result
        self.expected_seq = start
        self.expected_prev = expected_prev
        self.checkpoints = checkpoints
        self.hashes: dict[int, str] = {}
        self.total = total
        self.progress = progress

    def check(self, rows: Sequence[Any]) -> bool:
        """Check a batch of rows in seq order; False (and `result` says why) when broken."""
        result = self.result
        for row in rows:
            values = row._mapping
            seq = int(values["seq"])
            if seq != self.expected_seq:
                result.fail(self.expected_seq, f"event {self.expected_seq} is missing")
                return False
            prev = values["prev_hash"]
            if self.expected_prev is not None and prev != self.expected_prev:
                result.fail(seq, "its prev_hash does not link to the event before")
                return False
            digest = chain_hash(prev or "", seq, values)
            if digest != values["hash"]:
                result.fail(seq, "its content does not match its hash")
                return False
            if seq in self.checkpoints:
                self.hashes[seq] = digest
            self.expected_prev, self.expected_seq = digest, seq + 1
            result.checked += 1
        if self.progress is not None:
            self.progress(result.checked, self.total)
        return True


async def verify(  # noqa: PLR0911, PLR0912 - one exit per kind of break
    db: Database,
    *,
    ring: Keyring | None,
    from_seq: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 5000,
) -> Verification:
    """Re-hash the chain from `from_seq` (default: its start) and check every checkpoint."""
    # unscoped: the chain spans every tenant (the API allows deployment-level callers only).
    result = Verification()
    async with db.session() as session:
        anchor = await session.get(AuditAnchor, 1)
        bounds = (
            await session.execute(
                select(
                    func.min(AuditEvent.seq), func.max(AuditEvent.seq), func.count(AuditEvent.seq)
                )
            )
        ).one()
        result.unsealed = int(
            await session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_(None))
            )
            or 0
        )
        checkpoints = {
            row.seq: row
            for row in await session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))
        }
    low, high = bounds[0], bounds[1]
    start = anchor.seq + 1 if anchor is not None else 1
    if from_seq is not None:
        start = max(start, from_seq)
    expected_prev: str | None = (
        anchor.hash
        if anchor is not None and start == anchor.seq + 1
        else GENESIS
        if start == 1
        else None
    )
    if high is None:
        if checkpoints and max(checkpoints) > (anchor.seq if anchor else 0):
            return result.fail(max(checkpoints), "the chain is empty but a checkpoint covers it")
        return result
    if low is not None and low > start:
        return result.fail(start, f"events {start}..{low - 1} are missing")
    total = max(0, high - start + 1)
    result.first_seq, result.last_seq = start, high
    walk = _Walk(result, start, expected_prev, frozenset(checkpoints), total, progress)
    async with db.engine.connect() as connection:
        stream = await connection.stream(
            select(*_COLUMNS, AuditEvent.seq, AuditEvent.prev_hash, AuditEvent.hash)
            .where(AuditEvent.seq >= start)
            .order_by(AuditEvent.seq)
            .execution_options(yield_per=batch)
        )
        try:
            async for partition in stream.partitions(batch):
                if not walk.check(partition):
                    return result
        finally:
            await stream.close()
    hashes = walk.hashes
    keys = await _public_keys(db, ring)
    for seq, point in checkpoints.items():
        if seq < start:
            continue
        key = keys.get(point.kid)
        try:
            if key is None:
                raise InvalidSignature
            key.verify(bytes.fromhex(point.signature), _statement(seq, point.hash))
        except (InvalidSignature, ValueError):
            return result.fail(seq, "the checkpoint's signature is not valid")
        if seq > high:
            return result.fail(high + 1, f"the chain ends at {high} but checkpoint {seq} covers it")
        if hashes.get(seq) != point.hash:
            return result.fail(seq, "the chain does not pass through the signed checkpoint")
        result.checkpoints += 1
    return result


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Filters of the events list (all optional)."""

    actor: str | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    tenant: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    trace_id: str | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ValidationFailed(f"outcome must be one of {', '.join(OUTCOMES)}")
        if self.actor is not None:
            query = query.where(AuditEvent.actor_id == self.actor)
        if self.action is not None:
            escaped = self.action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(AuditEvent.action.like(f"{escaped}%", escape="\\"))
        if self.resource_type is not None:
            query = query.where(AuditEvent.resource_type == self.resource_type)
        if self.resource_id is not None:
            query = query.where(AuditEvent.resource_id == self.resource_id)
        if self.tenant is not None:
            query = query.where(AuditEvent.tenant_id == self.tenant)
        if self.outcome is not None:
            query = query.where(AuditEvent.outcome == self.outcome)
        if self.since is not None:
            query = query.where(AuditEvent.recorded_at >= self.since)
        if self.until is not None:
            query = query.where(AuditEvent.recorded_at < self.until)
        if self.trace_id is not None:
            query = query.where(AuditEvent.trace_id == self.trace_id)
        return query


async def list_events(
    session: AsyncSession,
    actor: Principal | None,
    filters: EventFilter,
    *,
    limit: int = 50,
    before: str | None = None,
) -> Sequence[AuditEvent]:
    """Events newest first, `limit` at a time before id `before`; a tenant's principal sees
    only its tenant's events."""
    query = tenant_scope(select(AuditEvent), AuditEvent, actor)
    query = filters.apply(query).order_by(AuditEvent.id.desc()).limit(max(1, min(limit, 500)))
    if before is not None:
        query = query.where(AuditEvent.id < before)
    return (await session.scalars(query)).all()


def event_data(row: Any) -> dict[str, Any]:
    """An event as plain JSON-ready data."""
    values = row._mapping if hasattr(row, "_mapping") else row.__dict__
    return {name: _value(values.get(name)) for name in (*CONTENT_COLUMNS, "seq", "hash")}


async def export_rows(
    db: Database, *, since: datetime | None = None, batch: int = 2000
) -> AsyncIterator[dict[str, Any]]:
    """Sealed events in `seq` order (then unsealed ones), streamed in batches."""
    # unscoped: an operator's export of the whole trail.
    query = select(*_COLUMNS, AuditEvent.seq, AuditEvent.hash).order_by(
        AuditEvent.seq.is_(None), AuditEvent.seq, AuditEvent.id
    )
    if since is not None:
        query = query.where(AuditEvent.recorded_at >= since)
    async with db.engine.connect() as connection:
        stream = await connection.stream(query.execution_options(yield_per=batch))
        try:
            async for partition in stream.partitions(batch):
                for row in partition:
                    yield event_data(row)
        finally:
            await stream.close()


# --- retention ---------------------------------------------------------------------------------


async def prune(db: Database, *, through_seq: int, reason: str) -> int:
    """Delete sealed events up to `through_seq` (after the caller archived them), move the
    anchor there, and record `audit.prune`. The one path that deletes events."""
    # unscoped: retention applies to the whole chain.
    async with db.transaction() as session:
        await _lock(session)
        row = (
            await session.execute(
                select(AuditEvent.seq, AuditEvent.hash).where(AuditEvent.seq == through_seq)
            )
        ).first()
        if row is None:
            raise ValidationFailed(f"no sealed event {through_seq}")
        session.add(AuditPruneFlag(id=1))
        await session.flush()
        result = await session.execute(delete(AuditEvent).where(AuditEvent.seq <= through_seq))
        await session.execute(delete(AuditPruneFlag))
        anchor = await session.get(AuditAnchor, 1)
        now = datetime.now(UTC)
        head_seq, head_hash = int(row[0] or 0), str(row[1])
        if anchor is None:
            session.add(AuditAnchor(id=1, seq=head_seq, hash=head_hash, pruned_at=now))
        else:
            anchor.seq, anchor.hash, anchor.pruned_at = head_seq, head_hash, now
        deleted = int(getattr(result, "rowcount", 0) or 0)
        await session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq < through_seq))
        await record(
            session,
            "audit.prune",
            resource=("audit", str(through_seq)),
            after={"through_seq": through_seq, "deleted": deleted},
            reason=reason,
        )
    return deleted
