"""Reading the trail: the filters' indexes."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from keel.audit.models import AuditEvent
from keel.audit.service import EventFilter
from keel.core.database import Database


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_action_prefix_filter_can_use_its_index(migrated_db: Database) -> None:
    """On PostgreSQL the action index is built with `text_pattern_ops`, so `action LIKE
    'user.%'` is an index range whatever the database's collation (a plain btree index
    serves LIKE only under the C collation)."""
    # PostgreSQL only: SQLite filters by the tenant index; the operator class is PostgreSQL's.
    query = EventFilter(action="user.").apply(select(AuditEvent.id))
    async with migrated_db.engine.connect() as connection:
        definition = (
            await connection.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_keel_audit_events_action'"
                " AND schemaname = current_schema()"
            )
        ).scalar_one()
        await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        compiled = query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
        plan = "\n".join(row[0] for row in await connection.exec_driver_sql(f"EXPLAIN {compiled}"))
    assert "text_pattern_ops" in definition
    assert "ix_keel_audit_events_action" in plan
    assert "~>=~ 'user.'" in plan and "~<~ 'user/'" in plan
