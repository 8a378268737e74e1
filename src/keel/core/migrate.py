"""Schema migrations: Alembic, shipped inside the package, one history for both dialects.

Migrations run on a connection Keel opens itself, so the same code path serves `keel serve`
(automatic on SQLite), `keel db upgrade` and the tests. Nothing here may drop data silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import column, inspect, select
from sqlalchemy import table as table_clause
from sqlalchemy.engine import Connection

from keel.core.database import Database
from keel.core.errors import StartupError

__all__ = [
    "MigrationState",
    "current_revision",
    "first_line",
    "head_revisions",
    "migration_state",
    "prepare",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


Locations = tuple[Path, ...]
"""Extra version directories, one per module that ships migrations (its own branch)."""


def alembic_config(locations: Locations = ()) -> AlembicConfig:
    """An Alembic configuration for Keel's migrations plus `locations` (no ini file)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option(
        "version_locations",
        os.pathsep.join(str(path) for path in (MIGRATIONS_DIR / "versions", *locations)),
    )
    config.set_main_option(
        "file_template",
        "%%(year)d-%%(month).2d-%%(day).2d-%%(hour).2d%%(minute).2d_%%(slug)s",
    )
    return config


@cache
def _script(locations: Locations) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(locations))


def head_revisions(locations: Locations = ()) -> tuple[str, ...]:
    """The revisions the shipped migrations end at (read once per process)."""
    return tuple(sorted(_script(locations).get_heads()))


@cache
def _lineage(locations: Locations) -> dict[str, frozenset[str]]:
    """Each revision with everything it stands on: parents and `depends_on`, transitively.

    Alembic records only the tips in its version table: a module branch that depends on a
    Keel revision hides that revision behind its own.
    """
    script = _script(locations)
    parents: dict[str, set[str]] = {}
    for node in script.walk_revisions():
        linked = set(node._all_down_revisions)  # parents and depends_on
        parents[node.revision] = {script.get_revision(r).revision for r in linked}
    lineage: dict[str, frozenset[str]] = {}

    def resolve(revision: str) -> frozenset[str]:
        if revision not in lineage:
            found = {revision}
            for parent in parents.get(revision, ()):
                found |= resolve(parent)
            lineage[revision] = frozenset(found)
        return lineage[revision]

    for revision in parents:
        resolve(revision)
    return lineage


@dataclass(frozen=True, slots=True)
class MigrationState:
    """Where a database stands against the shipped migrations."""

    current: tuple[str, ...]
    heads: tuple[str, ...]
    applied: frozenset[str] = frozenset()

    @property
    def at_head(self) -> bool:
        """Whether every shipped migration is applied."""
        return all(head in self.applied for head in self.heads)

    def describe(self) -> str:
        """One line for humans."""
        current = ", ".join(self.current) or "empty (no migrations applied)"
        return f"at {current}; head is {', '.join(self.heads)}"


VERSION_TABLE = "keel_alembic_version"
"""Keel's own version table, so an application's Alembic history can share the database."""


def _current(connection: Connection) -> tuple[str, ...]:
    # Read the version table directly: MigrationContext logs at INFO on every call, and
    # readiness probes call this every few seconds.
    if not inspect(connection).has_table(VERSION_TABLE):
        return ()
    table = table_clause(VERSION_TABLE, column("version_num"))
    return tuple(sorted(connection.execute(select(table.c.version_num)).scalars()))


async def current_revision(db: Database) -> tuple[str, ...]:
    """The revisions recorded in the database (empty when never migrated)."""
    async with db.engine.connect() as connection:
        return await connection.run_sync(_current)


async def migration_state(db: Database, locations: Locations = ()) -> MigrationState:
    """The database's revision compared with the shipped heads."""
    current = await current_revision(db)
    lineage = _lineage(locations)
    applied = frozenset().union(*(lineage.get(rev, {rev}) for rev in current))
    return MigrationState(current=current, heads=head_revisions(locations), applied=applied)


async def upgrade(
    db: Database, revision: str = "heads", locations: Locations = ()
) -> MigrationState:
    """Apply migrations up to `revision` (every branch by default), in one transaction."""
    config = alembic_config(locations)

    def _run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with db.migration_transaction() as connection:
        await connection.run_sync(_run)
    return await migration_state(db, locations)


async def prepare(db: Database, *, auto_migrate: bool, locations: Locations = ()) -> MigrationState:
    """Bring the schema to head (`auto_migrate`) or verify it is there; `StartupError` if not.

    The error is one line with a hint: the database is unreachable, or it needs
    `keel db upgrade`.
    """
    try:
        if auto_migrate:
            return await upgrade(db, locations=locations)
        state = await migration_state(db, locations)
    except Exception as exc:
        raise StartupError(
            f"cannot use the database at {db.display_url}: {first_line(exc)}",
            hint="check KEEL_DATABASE_URL and that the server is running (`keel doctor`)",
        ) from exc
    if not state.at_head:
        raise StartupError(
            f"the database is not migrated ({state.describe()})",
            hint="run `keel db upgrade` first",
        )
    return state


def first_line(exc: BaseException) -> str:
    """A short, single-line reason for a database error (the driver's message, not SQL)."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
