"""Alembic, driven from code: the server upgrades the schema to head on every start.

Developers make a new revision with::

    CORRAL_DATABASE_URL=sqlite:////tmp/x.db python -m corral.store.migrate revision -m "what"
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (idempotent)."""
    command.upgrade(alembic_config(url), "head")


def main(argv: list[str]) -> None:  # pragma: no cover - developer tool
    import os

    url = os.environ.get("CORRAL_DATABASE_URL", "sqlite:////tmp/corral-dev.db")
    cfg = alembic_config(url)
    if argv[:1] == ["revision"]:
        message = argv[argv.index("-m") + 1] if "-m" in argv else "change"
        command.upgrade(cfg, "head")
        command.revision(cfg, message=message, autogenerate=True)
    else:
        command.upgrade(cfg, "head")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
