"""project settings, pools, priorities, preemption

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 06:40:20.576676
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("pool", sa.String(length=63), nullable=True))
        batch_op.add_column(sa.Column("preempted_by_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_jobs_preempted_by", "jobs", ["preempted_by_id"], ["id"])

    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pool", sa.String(length=63), server_default="default", nullable=False)
        )

    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quota", sa.Float(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("weight", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("limit", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("pools", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("interactive_limit_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("usage_gpu_seconds", sa.Float(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("usage_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_foreign_key("fk_projects_parent", "projects", ["parent_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_constraint("fk_projects_parent", type_="foreignkey")
        batch_op.drop_column("usage_at")
        batch_op.drop_column("usage_gpu_seconds")
        batch_op.drop_column("parent_id")
        batch_op.drop_column("interactive_limit_seconds")
        batch_op.drop_column("pools")
        batch_op.drop_column("priority")
        batch_op.drop_column("limit")
        batch_op.drop_column("weight")
        batch_op.drop_column("quota")

    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("pool")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_jobs_preempted_by", type_="foreignkey")
        batch_op.drop_column("preempted_by_id")
        batch_op.drop_column("pool")
        batch_op.drop_column("priority")
