"""The wire format of the REST API: request and response bodies.

These pydantic models are the contract between the server, the CLI and the agent.
They are kept apart from the ORM models (`corral.store.models`) on purpose: the
database can change shape without changing what clients see, and the other way round.

Units are part of the field names where they are not obvious: ``*_bytes`` are bytes,
``*_seconds`` are seconds, ``gpus`` counts GPUs per worker (whole, or a fraction below 1
of one shared GPU).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.core.names import NAME_RE, NODE_NAME_RE
from corral.core.states import JobKind, JobState, NodeState, Role

# Bounds that keep one request from exhausting the server or an agent. A job that is
# refused by these gets a message naming the field and the bound.
MAX_GPUS_PER_JOB = 1024
MAX_WORKERS = 256  # workers of one gang
MIG_PROFILE_RE = r"^[1-8]g\.\d+gb(\+me)?$"
MAX_CPUS_PER_JOB = 4096
MAX_MEMORY_BYTES = 64 * 1024**4  # 64 TiB
MAX_COMMAND_ARGS = 4096
MAX_COMMAND_BYTES = 128 * 1024
MAX_ENV_VARS = 256
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_PATH_CHARS = 4096
MAX_GRACE_SECONDS = 3600.0
MAX_REQUEST_BYTES = 1024 * 1024  # whole request bodies, checked by the server

MAX_VOLUMES_PER_JOB = 32
# A Docker image reference: [registry[:port]/]path[:tag][@digest], lower-case path; as
# Docker reads it, the first part is a registry only with a "." or a port, or localhost.
IMAGE_RE = (
    r"^(?:(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|localhost)(?::[0-9]+)?/|[A-Za-z0-9-]+:[0-9]+/)?"
    r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[0-9a-f]{64})?$"
)

ENV_KEY_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Variables Corral sets itself; a user may not override them (they decide which GPUs
# the job sees and how it identifies itself).
RESERVED_ENV_PREFIXES = ("CORRAL_",)
# ... except these, which a job may set: the synthetic load a job declares for the
# simulated GPU back-end (`corral.agent.gpus.simulated`).
USER_CORRAL_ENV_KEYS = frozenset({"CORRAL_SIM_LOAD"})
RESERVED_ENV_KEYS = frozenset(
    {"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"}
)


def is_reserved_env(key: str) -> bool:
    """Whether ``key`` is Corral's to set (a job's own value is refused, and dropped)."""
    if key in USER_CORRAL_ENV_KEYS:
        return False
    return key in RESERVED_ENV_KEYS or key.startswith(RESERVED_ENV_PREFIXES)


# The patterns bound the length too (1-63, 1-253), so a bad name always gets the same message.
Name = Annotated[str, Field(pattern=NAME_RE.pattern)]
NodeName = Annotated[str, Field(pattern=NODE_NAME_RE.pattern)]


class _Strict(BaseModel):
    """Request bodies refuse unknown fields: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- errors


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    """Every error the API returns has this shape."""

    error: ErrorBody


# ---------------------------------------------------------------- users and auth


class WhoAmI(BaseModel):
    name: str
    role: Role
    projects: list[str]


class UserCreate(_Strict):
    name: Name
    role: Role = Role.USER
    unix_user: str | None = Field(
        default=None,
        pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="Unix account jobs of this user run as on nodes whose agent is root "
        "(default: the user's name).",
    )


class UserOut(BaseModel):
    name: str
    role: Role
    unix_user: str
    projects: list[str]
    created_at: datetime


class TokenCreate(_Strict):
    description: str = Field(default="", max_length=200)


class TokenOut(BaseModel):
    """A newly made API token. The secret is shown once; the server keeps only a hash."""

    user: str
    token: str
    description: str
    created_at: datetime


class JoinTokenOut(BaseModel):
    """A token that lets an agent join the cluster (``corral agent --join-token``)."""

    token: str
    created_at: datetime
    expires_at: datetime | None


class JoinTokenCreate(_Strict):
    ttl_seconds: float | None = Field(default=None, gt=0, le=365 * 86400)


# ---------------------------------------------------------------- projects


MAX_QUOTA_GPUS = 1_000_000.0
MAX_PROJECT_PRIORITY = 1000

# What a node does when a job on part of a shared GPU uses more of the GPU's memory
# than its share (docs/gpu-sharing.md): nothing, tell the job's user (an event on the
# job), or stop the job.
GpuMemoryPolicy = Literal["off", "warn", "stop"]
DEFAULT_GPU_MEMORY_POLICY: GpuMemoryPolicy = "warn"


class ProjectSettings(_Strict):
    """A project's scheduling settings. Every field is optional in an update (PATCH).

    GPU amounts may be fractional (0.5 = half a GPU). ``weight`` defaults to the quota;
    ``limit`` None = no hard cap; ``pools`` None = every node pool; ``parent`` names a
    department project whose quota bounds its children's. ``gpu_memory_policy`` is
    what happens to its jobs on shared GPUs that use more GPU memory than their share.
    """

    quota: float | None = Field(default=None, ge=0, le=MAX_QUOTA_GPUS)
    weight: float | None = Field(default=None, ge=0, le=MAX_QUOTA_GPUS)
    limit: float | None = Field(default=None, ge=0, le=MAX_QUOTA_GPUS)
    priority: int | None = Field(default=None, ge=-MAX_PROJECT_PRIORITY, le=MAX_PROJECT_PRIORITY)
    pools: list[Name] | None = Field(default=None, max_length=256)
    interactive_limit_seconds: float | None = Field(default=None, gt=0, le=366 * 86400)
    parent: Name | None = None
    gpu_memory_policy: GpuMemoryPolicy | None = None


class ProjectCreate(ProjectSettings):
    name: Name


class ProjectUpdate(ProjectSettings):
    """Fields to change; ``clear`` lists fields to reset to their default (e.g. limit)."""

    clear: list[Literal["weight", "limit", "pools", "interactive_limit_seconds", "parent"]] = Field(
        default_factory=list
    )


class ProjectMemberAdd(_Strict):
    user: Name


class ProjectOut(BaseModel):
    """A project with its settings and where it stands now (GPU amounts in GPUs)."""

    name: str
    members: list[str]
    quota: float
    weight: float
    limit: float | None
    priority: int
    pools: list[str] | None
    interactive_limit_seconds: float | None
    parent: str | None
    gpu_memory_policy: GpuMemoryPolicy = DEFAULT_GPU_MEMORY_POLICY
    fair_share: float | None
    jobs_running: int
    jobs_pending: int
    gpus_allocated: float
    created_at: datetime


class QueueEntry(BaseModel):
    """One pending job in scheduling order, with why it waits."""

    position: int
    name: str
    project: str
    user: str
    kind: JobKind
    priority: int
    gpus: float
    gpu_memory_bytes: int | None = None
    mig_profile: str | None = None
    workers: int = 1
    waiting_seconds: float
    reason: str | None


class QueueOut(BaseModel):
    jobs: list[QueueEntry]


# ---------------------------------------------------------------- jobs


class VolumeRequest(_Strict):
    """A directory a container job wants at ``target``: an admin-defined volume by name
    (`corral volume create`), or, only where the server allows host paths, a host path."""

    source: str = Field(
        min_length=1,
        max_length=MAX_PATH_CHARS,
        description="A volume's name, or an absolute host path (if the server allows them).",
    )
    target: str = Field(min_length=2, max_length=MAX_PATH_CHARS, pattern=r"^/")
    read_only: bool = False

    @field_validator("source", "target")
    @classmethod
    def _clean(cls, v: str) -> str:
        if "\x00" in v or ":" in v or "," in v:
            raise ValueError("must not contain NUL, ':' or ','")
        if v.startswith("/") and any(part == ".." for part in v.split("/")):
            raise ValueError("must not contain '..'")
        return v

    @property
    def is_host_path(self) -> bool:
        return self.source.startswith("/")


class VolumeCreate(_Strict):
    """An admin offers a host directory to container jobs as ``--volume NAME:/path``."""

    name: Name
    host_path: str = Field(
        min_length=2,
        max_length=MAX_PATH_CHARS,
        pattern=r"^/",
        description="Absolute path on the nodes; {user} and {unix_user} are replaced by "
        "the job owner's Corral and Unix names (one volume for every user's home).",
    )
    read_only: bool = False
    description: str | None = Field(default=None, max_length=500)

    @field_validator("host_path")
    @classmethod
    def _host_path(cls, v: str) -> str:
        if "\x00" in v or ":" in v or "," in v or any(p == ".." for p in v.split("/")):
            raise ValueError("must not contain NUL, ':', ',' or '..'")
        rest = v.replace("{user}", "").replace("{unix_user}", "")
        if "{" in rest or "}" in rest:
            raise ValueError("the only placeholders are {user} and {unix_user}")
        return v


class VolumeOut(BaseModel):
    name: str
    host_path: str
    read_only: bool
    description: str | None
    created_at: datetime


class VolumeList(BaseModel):
    volumes: list[VolumeOut]


class JobSubmit(_Strict):
    """What a user asks to run. See `corral submit --help` for the CLI side.

    Per worker a job asks for at most one of: whole ``gpus``, a fraction ``gpus`` < 1 of
    one shared GPU, ``gpu_memory_bytes`` of one shared GPU, or one MIG instance of
    ``mig_profile``. ``workers`` > 1 makes a gang (whole GPUs only): all workers start
    together or none.
    """

    name: Name
    project: Name = "default"
    kind: JobKind = JobKind.TRAIN
    gpus: float = Field(
        default=0,
        ge=0,
        le=MAX_GPUS_PER_JOB,
        description="GPUs per worker: whole, or a fraction below 1 of one shared GPU.",
    )
    gpu_memory_bytes: int | None = Field(
        default=None, gt=0, le=MAX_MEMORY_BYTES, description="GPU memory of one shared GPU."
    )
    mig_profile: str | None = Field(
        default=None, pattern=MIG_PROFILE_RE, description="One MIG instance, e.g. 1g.10gb."
    )
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS, description="Gang size.")
    cpus: float | None = Field(default=None, gt=0, le=MAX_CPUS_PER_JOB)
    memory_bytes: int | None = Field(default=None, gt=0, le=MAX_MEMORY_BYTES)
    command: list[str] = Field(
        default_factory=list,
        max_length=MAX_COMMAND_ARGS,
        description="The program and its arguments; empty only for a container job, "
        "which then runs its image's own command (CMD).",
    )
    env: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENV_VARS)
    workdir: str | None = Field(default=None, min_length=1, max_length=MAX_PATH_CHARS)
    grace_seconds: float | None = Field(
        default=None,
        ge=0,
        le=MAX_GRACE_SECONDS,
        description="Time between SIGTERM and SIGKILL when the job is stopped.",
    )
    priority: int = Field(default=0, ge=-1000, le=1000, description="Within the project.")
    pool: Name | None = Field(default=None, description="Node pool the job must run in.")
    image: str | None = Field(
        default=None,
        max_length=512,
        pattern=IMAGE_RE,
        description="Run the job as a container of this image (Docker) instead of a "
        "host process; only on nodes whose agent has a Docker engine.",
    )
    shm_size_bytes: int | None = Field(
        default=None,
        gt=0,
        le=MAX_MEMORY_BYTES,
        description="Size of the shared-memory mount (containers).",
    )
    volumes: list[VolumeRequest] = Field(
        default_factory=list,
        max_length=MAX_VOLUMES_PER_JOB,
        description="Directories to mount (containers).",
    )
    run_as_root: bool = Field(
        default=False,
        description="Run the container as its image's user (often root) instead of the "
        "user's own UID/GID; only where the server allows it.",
    )
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list,
        max_length=16,
        description="TCP ports of the job (on the node's 127.0.0.1) the server serves at "
        "/jobs/{id}/ports/{port}/ to the job's owner and admins.",
    )

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("a port is given twice")
        return v

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError(
                f"{v:g} GPUs: a job gets whole GPUs, or a fraction below 1 of one shared GPU"
            )
        if 0 < v < 0.01:
            raise ValueError(f"{v:g} GPUs: the smallest fraction of a GPU is 0.01")
        return v

    @model_validator(mode="after")
    def _one_device_shape(self) -> JobSubmit:
        given = [
            name
            for name, present in (
                ("gpus", self.gpus > 0),
                ("gpu_memory_bytes", self.gpu_memory_bytes is not None),
                ("mig_profile", self.mig_profile is not None),
            )
            if present
        ]
        if len(given) > 1:
            raise ValueError(
                f"{given[1]}: give only one of gpus, gpu_memory_bytes and mig_profile "
                f"({given[0]} is given too)"
            )
        if self.workers > 1 and (self.is_shared or self.mig_profile is not None):
            raise ValueError(
                "workers: a gang's workers get whole GPUs; fractions, GPU memory and MIG "
                "instances are for one-worker jobs"
            )
        if self.image is None and not self.command:
            raise ValueError(
                "command: give the program to run (only a container job may "
                "leave it out, to run its image's own command)"
            )
        if self.image is None:
            for name, present in (
                ("shm_size_bytes", self.shm_size_bytes is not None),
                ("volumes", bool(self.volumes)),
                ("run_as_root", self.run_as_root),
            ):
                if present:
                    raise ValueError(f"{name}: only for container jobs (give an image)")
        targets = [v.target.rstrip("/") for v in self.volumes]
        if len(set(targets)) != len(targets):
            raise ValueError("volumes: two volumes are mounted at the same path")
        return self

    @property
    def is_shared(self) -> bool:
        """Whether the job runs on part of a shared GPU (a fraction or an amount of memory)."""
        return 0 < self.gpus < 1 or self.gpu_memory_bytes is not None

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if v and not v[0]:
            raise ValueError("the program to run (first word) is empty")
        if any("\x00" in a for a in v):
            raise ValueError("contains a NUL character")
        if sum(len(a.encode()) + 1 for a in v) > MAX_COMMAND_BYTES:
            raise ValueError(f"is longer than {MAX_COMMAND_BYTES // 1024} KiB")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        import re

        for key, value in v.items():
            if not re.match(ENV_KEY_RE, key):
                raise ValueError(f"{key!r} is not a valid variable name")
            if is_reserved_env(key):
                raise ValueError(f"{key} is set by Corral and cannot be overridden")
            if "\x00" in value or len(value.encode()) > MAX_ENV_VALUE_BYTES:
                raise ValueError(f"value of {key} has a NUL or is over 32 KiB")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or "\x00" in v):
            raise ValueError("must be an absolute path")
        return v


class JobEventOut(BaseModel):
    at: datetime
    type: str
    message: str
    actor: str | None = None


class WorkerOut(BaseModel):
    """One worker of a gang (jobs with ``workers`` > 1)."""

    rank: int
    node: str | None
    gpu_ids: list[int]
    state: str
    pid: int | None
    exit_code: int | None


class JobOut(BaseModel):
    """A job as clients see it. ``gpus`` is what was asked (per worker); ``gpu_ids`` what
    the first worker was given (a MIG job: the parent GPU, its instance in ``gpu_uuids``).
    """

    id: int
    name: str
    project: str
    user: str
    kind: JobKind
    state: JobState
    node: str | None
    gpus: float
    gpu_memory_bytes: int | None = None
    mig_profile: str | None = None
    workers: int = 1
    gpu_ids: list[int]
    gpu_uuids: list[str]
    worker_list: list[WorkerOut] = Field(default_factory=list)
    cpus: float | None
    memory_bytes: int | None
    command: list[str]
    env: dict[str, str]
    workdir: str | None
    grace_seconds: float
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    reason: str | None
    deleted: bool
    priority: int
    pool: str | None
    container: ContainerSpec | None = None  # None: a host process
    ports: list[int] = Field(
        default_factory=list, description="Served at /jobs/{id}/ports/{port}/ (see --port)."
    )


class JobDetail(JobOut):
    events: list[JobEventOut]


class JobList(BaseModel):
    jobs: list[JobOut]


# ---------------------------------------------------------------- nodes


class MigInstance(BaseModel):
    """One MIG instance (a GPU instance with its compute instance) of a GPU.

    ``profile`` as NVIDIA names it (``1g.10gb``); ``compute_slices`` is its share of the
    GPU's 7 compute slices; ``uuid`` is ``MIG-…`` (what CUDA_VISIBLE_DEVICES takes).
    """

    uuid: str = Field(min_length=1, max_length=128)
    profile: str = Field(pattern=MIG_PROFILE_RE)
    gpu_instance_id: int = Field(ge=0)
    compute_instance_id: int = Field(ge=0)
    compute_slices: int = Field(ge=1, le=8)
    memory_bytes: int = Field(ge=0)


class GpuInfo(BaseModel):
    """One GPU as the agent found it. Identity is the UUID; index is NVML (PCI) order.

    ``mig`` lists its MIG instances when MIG mode is on (the layout is discovered, never
    assumed); then only the instances are schedulable, not the whole GPU.
    """

    index: int = Field(ge=0, lt=1024)
    uuid: str = Field(min_length=1, max_length=128)
    model: str = Field(max_length=256)
    memory_bytes: int = Field(ge=0)
    simulated: bool = False
    mig: list[MigInstance] = Field(default_factory=list, max_length=64)


class NodeInventory(_Strict):
    """What an agent tells the server about its machine when it registers."""

    name: NodeName
    hostname: str = Field(max_length=253)
    address: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[A-Za-z0-9.:_-]+$",
        description="Where other nodes reach this one (a gang's MASTER_ADDR when its first "
        "worker runs here); default: the hostname.",
    )
    cpu_cores: int = Field(ge=1, le=65536)
    memory_bytes: int = Field(ge=0)
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=1024)
    driver_version: str | None = Field(default=None, max_length=64)
    cuda_version: str | None = Field(default=None, max_length=64)
    simulated: bool = False
    gpu_backend: str = Field(default="none", max_length=32, description="nvml | simulated | none")
    agent_version: str = Field(default="", max_length=64)
    pool: Name = Field(default="default", description="The node pool this node belongs to.")
    runs_jobs_as: str = Field(
        default="",
        max_length=64,
        description="'mapped-user' when the agent is root, else the agent's own account",
    )
    container_engine: str | None = Field(
        default=None,
        max_length=64,
        description="The container engine the agent runs container jobs with, e.g. "
        "'docker 20.10.24'; None: it cannot run container jobs.",
    )

    @model_validator(mode="after")
    def _unique_gpus(self) -> NodeInventory:
        if len({g.index for g in self.gpus}) != len(self.gpus):
            raise ValueError("gpus: two GPUs share an index")
        if len({g.uuid for g in self.gpus}) != len(self.gpus):
            raise ValueError("gpus: two GPUs share a UUID")
        return self


class NodeOut(BaseModel):
    name: str
    state: NodeState
    pool: str
    hostname: str
    address: str | None = None
    cpu_cores: int
    memory_bytes: int
    gpus: int
    gpus_allocated: int
    gpu_devices: list[GpuInfo]
    driver_version: str | None
    cuda_version: str | None
    simulated: bool
    gpu_backend: str
    agent_version: str
    container_engine: str | None = None  # "docker 20.10.24"; None: no container jobs
    last_heartbeat: datetime | None
    registered_at: datetime
    jobs: list[str]
    reason: str | None


class NodeList(BaseModel):
    nodes: list[NodeOut]


# ---------------------------------------------------------------- agent protocol


class RegisterResponse(BaseModel):
    node: str
    node_token: str
    sync_wait_seconds: float


class Mount(BaseModel):
    """A host directory in a container, as the server resolved the job's volumes."""

    source: str  # absolute host path on the node
    target: str  # absolute path in the container
    read_only: bool = False
    volume: str | None = None  # the admin's volume it came from; None: a host path


class ContainerSpec(BaseModel):
    """How to run an assignment as a container (None on an assignment: a host process).

    The agent runs it as the job's Unix account (UID/GID) unless ``run_as_root``; limits
    come from the assignment's ``cpus`` and ``memory_bytes``; GPUs from ``gpu_uuids``.
    """

    image: str
    shm_size_bytes: int | None = None
    mounts: list[Mount] = Field(default_factory=list)
    run_as_root: bool = False


class Assignment(BaseModel):
    """One job (one worker of a gang) the server wants a node to run, or to stop.

    ``attempt`` fences stale bindings: an agent never starts a job with an attempt
    lower than one it has already seen for the same job. A gang's workers are
    assignments of the same job with ranks 0..world_size-1, several possibly on one node.
    ``gpu_uuids`` are what the job may see: GPU UUIDs, or the ``MIG-…`` UUID of its MIG
    instance. ``gpu_memory_bytes`` is set for a job on part of a shared GPU: its share;
    ``gpu_memory_policy`` is its project's answer to a job that uses more than that.
    """

    job_id: int
    attempt: int
    name: str
    project: str
    user: str
    unix_user: str
    kind: JobKind
    state: JobState
    command: list[str]
    env: dict[str, str]
    workdir: str | None
    gpu_ids: list[int]
    gpu_uuids: list[str]
    cpus: float | None
    memory_bytes: int | None
    grace_seconds: float
    stop: bool
    rank: int = 0
    world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    gpu_fraction: float | None = None
    gpu_memory_bytes: int | None = None
    gpu_memory_policy: GpuMemoryPolicy = DEFAULT_GPU_MEMORY_POLICY
    after: list[int] = Field(
        default_factory=list,
        description="Jobs on this node that must be gone before this one starts: the "
        "jobs it preempted, which are still stopping.",
    )
    container: ContainerSpec | None = Field(
        default=None, description="Run as a container of this spec; None: a host process."
    )


class JobReport(_Strict):
    """What an agent says happened to a job.

    - ``starting``: accepted, preparing; ``running``: process alive (``pid`` set);
    - ``exited``: the process ended with ``exit_code`` (a signal N shows as 128+N);
    - ``failed``: it could not be started at all; ``message`` says why;
    - ``notice``: not a state change: ``message`` is something the job's user should
      know (it used more GPU memory than its share), recorded as a job event.
    """

    job_id: int
    attempt: int = Field(ge=1)
    rank: int = Field(default=0, ge=0, lt=MAX_WORKERS)
    state: Literal["starting", "running", "exited", "failed", "notice"]
    exit_code: int | None = None
    pid: int | None = None
    message: str | None = Field(default=None, max_length=4000)
    at: datetime | None = None


class SyncRequest(_Strict):
    """An agent's heartbeat: reports since the last sync, and the generation it has seen.

    The server answers at once when it has a newer desired state (or reports were
    included), else holds the request up to ``wait_seconds`` (long poll).
    """

    generation_seen: int = Field(ge=0)
    reports: list[JobReport] = Field(default_factory=list, max_length=10000)
    wait_seconds: float = Field(default=0, ge=0, le=60)


class SyncResponse(BaseModel):
    generation: int
    assignments: list[Assignment]
    server_time: datetime


class LogAck(BaseModel):
    """The byte offset the server has stored up to for one job attempt's output."""

    next_offset: int
