"""Alembic environment: the daemon passes its own connection; the CLI uses FTQ_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel, create_engine

import server.db.models  # noqa: F401  (registers the tables on SQLModel.metadata)

target_metadata = SQLModel.metadata


def run_with(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_with(connection)
else:
    from server.settings import Settings

    engine = create_engine(Settings().resolved_database_url)
    with engine.begin() as conn:
        run_with(conn)
