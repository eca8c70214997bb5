"""The migrations build exactly the schema the ORM models describe (on both back-ends)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from corral.store.migrate import upgrade
from corral.store.models import Base


def test_migrations_match_the_models(database_url: str) -> None:
    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations differ (make a migration): {diff}"
