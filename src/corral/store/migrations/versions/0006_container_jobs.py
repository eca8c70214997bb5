"""container jobs: image and options per job, container engine per node, volumes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("shm_size_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("volumes", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("run_as_root", sa.Boolean(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("container_engine", sa.String(length=64), nullable=True))
    op.create_table(
        "volumes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("host_path", sa.Text(), nullable=False),
        sa.Column("read_only", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("volumes")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("container_engine")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("run_as_root")
        batch_op.drop_column("volumes")
        batch_op.drop_column("shm_size_bytes")
        batch_op.drop_column("image")
