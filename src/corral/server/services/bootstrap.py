"""First start: the ``default`` project, the admin user, the admin token, a join token.

The admin and join tokens are printed once and written to ``<data-dir>/admin-token``
and ``<data-dir>/join-token`` (mode 0600), as k3s does with its node token, so that
`corral up` and `corral demo` can log the local CLI in and join local agents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from corral.core.states import Role
from corral.paths import write_secret
from corral.server.context import ServerContext
from corral.server.services.accounts import DEFAULT_PROJECT
from corral.server.services.auth import create_join_token, create_user_token
from corral.store.models import Project, User

ADMIN_USER = "admin"


@dataclass
class BootstrapResult:
    admin_token: str | None
    join_token: str | None
    admin_token_file: Path
    join_token_file: Path


def bootstrap(ctx: ServerContext) -> BootstrapResult:
    """Create what a new installation needs. Idempotent: does nothing the second time."""
    data_dir = ctx.settings.resolved_data_dir()
    now = ctx.clock.now()
    admin_token = join_token = None
    with ctx.db.tx() as s:
        if s.scalar(select(Project).where(Project.name == DEFAULT_PROJECT)) is None:
            s.add(Project(name=DEFAULT_PROJECT, created_at=now))
        if s.scalar(select(User).where(User.role == Role.ADMIN.value)) is None:
            admin = User(
                name=ADMIN_USER, role=Role.ADMIN.value, unix_user=ADMIN_USER, created_at=now
            )
            s.add(admin)
            s.flush()
            admin_token = create_user_token(s, admin, now, "created on first start")
            join_token = create_join_token(s, now, None)
    result = BootstrapResult(
        admin_token=admin_token,
        join_token=join_token,
        admin_token_file=data_dir / "admin-token",
        join_token_file=data_dir / "join-token",
    )
    if admin_token and join_token:
        write_secret(result.admin_token_file, admin_token)
        write_secret(result.join_token_file, join_token)
    return result
