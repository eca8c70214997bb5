"""shared GPUs, MIG instances, gang workers

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 08:17:42.569547
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mig_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=128), nullable=False),
        sa.Column("profile", sa.String(length=32), nullable=False),
        sa.Column("gpu_instance_id", sa.Integer(), nullable=False),
        sa.Column("compute_instance_id", sa.Integer(), nullable=False),
        sa.Column("compute_slices", sa.Integer(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("node_id", "uuid"),
    )
    op.create_table(
        "gpu_shares",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("mig_uuid", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id"),
        sa.UniqueConstraint("node_id", "mig_uuid"),
    )
    with op.batch_alter_table("gpu_shares", schema=None) as batch_op:
        batch_op.create_index("ix_gpu_shares_gpu", ["node_id", "gpu_index"], unique=False)

    op.create_table(
        "job_workers",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=True),
        sa.Column("gpu_ids", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("job_id", "rank"),
    )
    with op.batch_alter_table("job_workers", schema=None) as batch_op:
        batch_op.create_index("ix_job_workers_node", ["node_id"], unique=False)

    with op.batch_alter_table("gpu_allocations", schema=None) as batch_op:
        batch_op.alter_column("job_id", existing_type=sa.INTEGER(), nullable=True)

    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("address", sa.String(length=253), nullable=True))

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpu_memory_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("mig_profile", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("workers", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("mig_uuid", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("master_port", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("failed_worker", sa.Integer(), nullable=True))


def downgrade() -> None:
    # Shared-GPU markers have no job; the old schema can not hold them.
    op.execute("DELETE FROM gpu_allocations WHERE job_id IS NULL")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("failed_worker")
        batch_op.drop_column("master_port")
        batch_op.drop_column("mig_uuid")
        batch_op.drop_column("workers")
        batch_op.drop_column("mig_profile")
        batch_op.drop_column("gpu_memory_bytes")

    with op.batch_alter_table("gpu_allocations", schema=None) as batch_op:
        batch_op.alter_column("job_id", existing_type=sa.INTEGER(), nullable=False)

    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("address")

    with op.batch_alter_table("job_workers", schema=None) as batch_op:
        batch_op.drop_index("ix_job_workers_node")

    op.drop_table("job_workers")
    with op.batch_alter_table("gpu_shares", schema=None) as batch_op:
        batch_op.drop_index("ix_gpu_shares_gpu")

    op.drop_table("gpu_shares")
    op.drop_table("mig_instances")
