"""Set-up for `audit.py`: the two databases, the plain baseline table and the workload.

`open_target` gives a migrated Keel database with its keyring and the plain table: SQLite in
a file of the run's temp dir, or PostgreSQL in a fresh schema of `BENCH_POSTGRES_URL` (default
the `test` database on 127.0.0.1) reached through `?options=-csearch_path%3D<schema>` as the
tests do, dropped on the way out.

`Workload` draws events with a realistic spread: 20 tenants, 30 actions over 10 resource types,
1000 actors (950 users, 50 API keys, each in one tenant) plus system events without a tenant,
all Zipf-skewed (a few tenants, actions and actors are much busier than the rest), a 2-field
diff, now and then a redacted secret field, a trace per event.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import os
import random
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Index, MetaData, Table

from keel import Config
from keel.audit.context import Actor
from keel.audit.models import AuditEvent
from keel.audit.service import diff
from keel.core.context import TraceContext
from keel.core.database import Database
from keel.core.ids import new_id
from keel.core.keyring import Keyring, load_master_key
from keel.core.migrate import upgrade

__all__ = [
    "ACTIONS",
    "POSTGRES_URL",
    "RESOURCES",
    "Spec",
    "Target",
    "Workload",
    "open_target",
    "plain_events",
    "postgres_problem",
]

POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# PostgreSQL deployments bring their own master key; any 32 bytes do for the bench.
MASTER_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")

# 10 resource types x 3 verbs; an `action` filter is a resource prefix such as "user.".
ACTIONS = (
    "auth.login",
    "user.update",
    "document.update",
    "auth.refresh",
    "apikey.use",
    "share.use",
    "document.create",
    "user.create",
    "setting.read",
    "auth.logout",
    "invoice.create",
    "role.assign",
    "share.create",
    "document.delete",
    "invoice.update",
    "user.disable",
    "apikey.create",
    "role.revoke",
    "setting.update",
    "share.revoke",
    "tenant.update",
    "invoice.void",
    "audit.export",
    "apikey.revoke",
    "role.create",
    "tenant.create",
    "audit.verify",
    "setting.reset",
    "tenant.delete",
    "audit.prune",
)
RESOURCES = tuple(sorted({action.split(".")[0] for action in ACTIONS}))
TENANTS = 20
ACTORS = 1000
API_KEYS = 50  # the last 50 actors are API keys
SYSTEM_SHARE = 0.02  # events by `system:cli`, without a tenant
_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 Safari/605.1.15",
    "python-httpx/0.28.1",
    "curl/8.5.0",
)

# --- the plain baseline table ----------------------------------------------------------------
plain_metadata = MetaData()
plain_events = Table(
    "bench_plain_events",
    plain_metadata,
    *(
        Column(column.name, column.type, primary_key=column.primary_key, nullable=column.nullable)
        for column in AuditEvent.__table__.columns
    ),
)
"""The audit table's columns without the chain: no triggers, no unique `seq`, no index of
unsealed rows, nothing sealed afterwards. It keeps the audit table's read indexes (time,
tenant, actor, action, resource, trace), which any searchable event log needs."""
for _name, _columns in {
    "recorded_at": ("recorded_at",),
    "tenant": ("tenant_id", "id"),
    "actor": ("actor_id", "id"),
    "action": ("action", "id"),
    "resource": ("resource_type", "resource_id", "id"),
    "trace": ("trace_id",),
}.items():
    Index(f"ix_bench_plain_events_{_name}", *(plain_events.c[c] for c in _columns))


# --- the workload ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Spec:
    """One event to record: what `record()` is given."""

    actor: Actor
    action: str
    resource: tuple[str, str]
    outcome: str
    before: dict[str, Any]
    after: dict[str, Any]
    reason: str | None


def _zipf(count: int, exponent: float) -> list[float]:
    """Cumulative weights of `count` ranks with weight 1/rank^exponent."""
    total, cumulative = 0.0, []
    for rank in range(1, count + 1):
        total += 1.0 / rank**exponent
        cumulative.append(total)
    return cumulative


class Workload:
    """Draws events; the same seed draws the same tenants, actors and actions."""

    def __init__(self, seed: int = 20261122) -> None:
        rng = random.Random(seed)
        self.tenants = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(TENANTS)]
        self.actors: list[Actor] = []
        for index in range(ACTORS):
            tenant = self.tenants[index % TENANTS]
            ip = f"10.{index % 7}.{index // 250}.{index % 250 + 1}"
            agent = _AGENTS[index % len(_AGENTS)]
            if index < ACTORS - API_KEYS:
                kind, ident, label = "user", f"u{index:05d}", f"user{index}@example.com"
            else:
                kind, ident, label = "api_key", f"k{index:05d}", f"ci key {index}"
            self.actors.append(Actor(kind, ident, label, tenant, None, ip, agent))
        self.system = Actor("system", "system:cli", "ops", None, None, None, None)
        self._actor_weights = _zipf(ACTORS, 0.8)
        self._action_weights = _zipf(len(ACTIONS), 1.0)

    def _pick(self, rng: random.Random, cumulative: Sequence[float]) -> int:
        return bisect.bisect(cumulative, rng.random() * cumulative[-1])

    def spec(self, rng: random.Random) -> Spec:
        """One event."""
        if rng.random() < SYSTEM_SHARE:
            actor = self.system
        else:
            actor = self.actors[self._pick(rng, self._actor_weights)]
        action = ACTIONS[self._pick(rng, self._action_weights)]
        number = rng.randrange(100_000)
        before: dict[str, Any] = {"status": "active", "version": number}
        after: dict[str, Any] = {
            "status": rng.choice(("active", "disabled")),
            "version": number + 1,
        }
        if rng.random() < 0.05:  # a secret field: only the fact that it changed is kept
            before["password_hash"], after["password_hash"] = "old-hash", "new-hash"
        roll = rng.random()
        outcome = "success" if roll < 0.95 else "denied" if roll < 0.99 else "failed"
        reason = "requested by the customer" if rng.random() < 0.1 else None
        resource = (action.split(".")[0], f"r{number:05d}")
        return Spec(actor, action, resource, outcome, before, after, reason)

    @staticmethod
    def trace(rng: random.Random) -> TraceContext:
        """A request's trace position."""
        return TraceContext(
            f"{rng.getrandbits(128):032x}", f"{rng.getrandbits(64):016x}", None, True, ""
        )

    @staticmethod
    def row(spec: Spec, trace: TraceContext) -> dict[str, Any]:
        """The content columns `record()` would store for `spec` under `trace`."""
        who = spec.actor
        return {
            "id": new_id(),
            "recorded_at": datetime.now(UTC),
            "actor_type": who.type,
            "actor_id": who.id,
            "actor_label": who.label[:320],
            "origin": who.origin,
            "tenant_id": who.tenant_id,
            "action": spec.action[:100],
            "resource_type": spec.resource[0],
            "resource_id": spec.resource[1],
            "outcome": spec.outcome,
            "changes": diff(spec.before, spec.after),
            "reason": spec.reason,
            "trace_id": trace.trace_id,
            "span_id": trace.span_id,
            "client_ip": who.client_ip,
            "user_agent": who.user_agent,
        }


# --- the databases ---------------------------------------------------------------------------
@dataclass
class Target:
    """A migrated Keel database with its keyring and the plain table."""

    dialect: str
    db: Database
    ring: Keyring
    where: str  # the file or schema, for the output


def _conninfo() -> str:
    return POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")


async def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None."""
    try:
        import psycopg
    except ModuleNotFoundError:
        return "psycopg is not installed"
    try:
        connection = await psycopg.AsyncConnection.connect(_conninfo(), connect_timeout=3)
        await connection.close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(exc).strip()[:120]}"
    return None


async def _admin(statement: str) -> None:
    import psycopg

    connection = await psycopg.AsyncConnection.connect(_conninfo(), autocommit=True)
    try:
        await connection.execute(statement.encode())
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def open_target(dialect: str, workdir: Path) -> AsyncIterator[Target]:
    """A fresh, migrated database of `dialect`, removed afterwards."""
    schema: str | None = None
    extra: dict[str, Any] = {}
    if dialect == "sqlite":
        path = workdir / "audit.db"
        url, where = f"sqlite+aiosqlite:///{path.as_posix()}", str(path)
    else:
        schema = f"bench_audit_{uuid.uuid4().hex[:10]}"
        await _admin(f'CREATE SCHEMA "{schema}"')
        separator = "&" if "?" in POSTGRES_URL else "?"
        url = f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
        where = f"schema {schema}"
        extra["master_key"] = MASTER_KEY
    config = Config(
        data_dir=workdir / f"data-{dialect}",
        database_url=url,
        auto_migrate=True,
        log_format="json",
        **extra,
    )
    db = Database(config)
    try:
        await upgrade(db)
        ring = Keyring(load_master_key(config))
        await ring.load(db)
        async with db.transaction() as session:
            connection = await session.connection()
            await connection.run_sync(plain_metadata.create_all)
        yield Target(dialect, db, ring, where)
    finally:
        await db.dispose()
        if schema is not None:
            await _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
