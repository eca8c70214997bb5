"""Alembic environment: runs migrations on the engine Corral uses (SQLite or PostgreSQL)."""

from __future__ import annotations

from alembic import context

from corral.store.db import make_engine
from corral.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url") or ""
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things in place: batch mode copies the table.
            render_as_batch=connection.dialect.name == "sqlite",
            # Monitoring history (`corral.server.metrics.store`) manages its own tables.
            include_name=lambda name, type_, _parents: (
                not (type_ == "table" and name is not None and name.startswith("metrics_"))
            ),
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
