"""Alembic environment: runs on the connection Keel passes in `config.attributes`."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from keel.core.database import Base
from keel.core.migrate import VERSION_TABLE

target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    """Configure the context on Keel's connection and run the pending migrations."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if _connection is None:
    raise RuntimeError("Keel migrations run through `keel db upgrade`, not the alembic command")
run_migrations(_connection)
