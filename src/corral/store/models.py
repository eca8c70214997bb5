"""ORM models. Rows only: no behaviour, no hooks (control flow lives in services).

Invariants the database itself enforces, so no bug above it can break them:
- a GPU is either held whole by one job or shared (`GpuAllocation` primary key = node +
  GPU index; a shared GPU's row has no job, its holders are `GpuShare` rows);
- a MIG instance is held by at most one job (`GpuShare` unique node + MIG UUID);
- a job name is unique inside a project among jobs that are not deleted (partial index);
- names of users, projects and nodes are unique.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every back-end (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use Clock.now()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    unix_user: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]


class ApiToken(Base):
    """A user's API token; only the SHA-256 of the secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]

    user: Mapped[User] = relationship(lazy="joined")


class JoinToken(Base):
    """Lets an agent register a node. Only the hash is stored."""

    __tablename__ = "join_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]


class Project(Base):
    """A project (or department, when others name it as parent) and its GPU settings.

    GPU amounts in GPUs (fractions allowed). ``weight`` None = equal to the quota;
    ``limit`` None = no cap; ``pools`` None = all pools. ``usage_gpu_seconds`` is the
    time-decayed usage as of ``usage_at`` (only used when a half-life is configured).
    """

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime]
    quota: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    weight: Mapped[float | None] = mapped_column(Float)
    limit: Mapped[float | None] = mapped_column(Float)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    pools: Mapped[list[Any] | None]
    interactive_limit_seconds: Mapped[float | None] = mapped_column(Float)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    usage_gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    usage_at: Mapped[datetime | None]
    # "off" | "warn" | "stop": a job on a shared GPU that uses more memory than its share.
    gpu_memory_policy: Mapped[str] = mapped_column(String(8), default="warn", server_default="warn")


class ProjectMember(Base):
    __tablename__ = "project_members"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )


class Node(Base):
    """A machine running `corral agent`. ``generation`` grows whenever its desired state does."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    hostname: Mapped[str] = mapped_column(String(253))
    # Where other nodes reach this one (None: the hostname).
    address: Mapped[str | None] = mapped_column(String(253))
    cpu_cores: Mapped[int]
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    driver_version: Mapped[str | None] = mapped_column(String(64))
    cuda_version: Mapped[str | None] = mapped_column(String(64))
    simulated: Mapped[bool] = mapped_column(Boolean)
    gpu_backend: Mapped[str] = mapped_column(String(32))
    agent_version: Mapped[str] = mapped_column(String(64))
    runs_jobs_as: Mapped[str] = mapped_column(String(64))
    # "docker 20.10.24" when the agent can run container jobs; None: it cannot.
    container_engine: Mapped[str | None] = mapped_column(String(64))
    pool: Mapped[str] = mapped_column(String(63), default="default", server_default="default")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    registered_at: Mapped[datetime]
    last_heartbeat: Mapped[datetime | None]
    state_changed_at: Mapped[datetime]

    gpus: Mapped[list[Gpu]] = relationship(
        order_by="Gpu.index", cascade="all, delete-orphan", lazy="selectin"
    )


class Gpu(Base):
    __tablename__ = "gpus"
    __table_args__ = (UniqueConstraint("node_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    index: Mapped[int]
    uuid: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(256))
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    simulated: Mapped[bool] = mapped_column(Boolean)
    # Who uses it outside Corral, as the node last reported ("alice (pid 42 python)");
    # None: nobody. The scheduler hands out no GPU that has it set.
    unmanaged: Mapped[str | None] = mapped_column(Text)


class MigInstance(Base):
    """One MIG instance of a node's GPU, as the agent discovered it."""

    __tablename__ = "mig_instances"
    __table_args__ = (UniqueConstraint("node_id", "uuid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    gpu_index: Mapped[int]
    uuid: Mapped[str] = mapped_column(String(128))
    profile: Mapped[str] = mapped_column(String(32))
    gpu_instance_id: Mapped[int]
    compute_instance_id: Mapped[int]
    compute_slices: Mapped[int]
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    unmanaged: Mapped[str | None] = mapped_column(Text)  # as `Gpu.unmanaged`


class Job(Base):
    """A unit of work. ``id`` order is submission order; ``attempt`` grows with each binding."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index(
            "uq_jobs_project_name_live",
            "project_id",
            "name",
            unique=True,
            sqlite_where=text("deleted = 0"),
            postgresql_where=text("deleted = false"),
        ),
        Index("ix_jobs_state", "state"),
        Index("ix_jobs_node_state", "node_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    gpus: Mapped[float] = mapped_column(Float)  # per worker; < 1 = a share of one GPU
    gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    mig_profile: Mapped[str | None] = mapped_column(String(32))
    workers: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    cpus: Mapped[float | None] = mapped_column(Float)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    command: Mapped[list[Any]]
    env: Mapped[dict[str, Any]]
    workdir: Mapped[str | None] = mapped_column(Text)
    grace_seconds: Mapped[float] = mapped_column(Float)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id"))
    gpu_ids: Mapped[list[Any]]
    pid: Mapped[int | None]
    exit_code: Mapped[int | None]
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    pool: Mapped[str | None] = mapped_column(String(63))
    # Set while the job is being stopped to make room for another: its devices already
    # belong to that job (the agent starts it once this one is gone).
    preempted_by_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    # Why the job was last preempted ("preempted by d-1 of team-d: reclaim: …"), shown
    # with its reason while it waits to restart.
    preempted_note: Mapped[str | None] = mapped_column(Text)
    # Where the current attempt runs, beyond node_id/gpu_ids (= worker 0's): the MIG
    # instance of a MIG job, and the rendezvous port of a gang (on worker 0's node).
    mig_uuid: Mapped[str | None] = mapped_column(String(128))
    master_port: Mapped[int | None]
    # The rank of the gang worker whose failure is stopping the others (the job then
    # ends failed, not stopped).
    failed_worker: Mapped[int | None]
    # A container job: its image (None: a host process), /dev/shm size, the volumes it
    # asked for ([{"source", "target", "read_only"}], resolved when it is bound) and
    # whether it runs as the image's user rather than its owner's UID/GID.
    image: Mapped[str | None] = mapped_column(String(512))
    shm_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    volumes: Mapped[list[Any] | None]
    run_as_root: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # TCP ports of the job served at /jobs/{id}/ports/{port}/ (`corral submit --port`).
    ports: Mapped[list[Any] | None]

    project: Mapped[Project] = relationship(lazy="joined")
    user: Mapped[User] = relationship(lazy="joined")
    node: Mapped[Node | None] = relationship(lazy="joined")
    preempted_by: Mapped[Job | None] = relationship(remote_side=[id], lazy="select")
    # A gang's workers (empty for one-worker jobs); loaded only when asked for.
    worker_rows: Mapped[list[JobWorker]] = relationship(
        order_by="JobWorker.rank", lazy="select", viewonly=True
    )


class GpuAllocation(Base):
    """Which job holds which GPU whole, or that the GPU is shared (``job_id`` None).

    The primary key makes double allocation impossible, and a GPU shared by fractional,
    memory or MIG jobs can not also be handed out whole (nor the other way round).
    """

    __tablename__ = "gpu_allocations"

    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    gpu_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )


class GpuShare(Base):
    """A job's part of a shared GPU: ``memory_bytes`` of it, or one MIG instance of it.

    One row per job (shared jobs have one worker). The GPU's `GpuAllocation` row (with
    no job) exists while it has shares; the unique (node, MIG UUID) makes a MIG
    instance have one holder (NULLs, for non-MIG shares, never collide).
    """

    __tablename__ = "gpu_shares"
    __table_args__ = (
        UniqueConstraint("node_id", "mig_uuid"),
        Index("ix_gpu_shares_gpu", "node_id", "gpu_index"),
    )

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    gpu_index: Mapped[int]
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    mig_uuid: Mapped[str | None] = mapped_column(String(128))


class JobWorker(Base):
    """One worker of a gang (jobs with ``workers`` > 1) in its current attempt.

    Rank 0's placement is also the job's own ``node_id``/``gpu_ids``. The rows are
    replaced at each binding and kept after the job ends (what each worker did).
    """

    __tablename__ = "job_workers"
    __table_args__ = (Index("ix_job_workers_node", "node_id"),)

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"))
    gpu_ids: Mapped[list[Any]]
    state: Mapped[str] = mapped_column(String(16))  # bound starting running exited failed
    pid: Mapped[int | None]
    exit_code: Mapped[int | None]

    node: Mapped[Node | None] = relationship(lazy="joined")


class Volume(Base):
    """A host directory an admin offers to container jobs by name: ``corral submit
    --volume NAME:/path``. ``host_path`` may hold ``{user}`` (the job owner's name), so
    one volume gives every user their own home directory."""

    __tablename__ = "volumes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    host_path: Mapped[str] = mapped_column(Text)
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class JobEvent(Base):
    """One thing that happened to a job: who/what did it and why."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(253))


class NodeEvent(Base):
    __tablename__ = "node_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
