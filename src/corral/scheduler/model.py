"""The scheduler's input and output types. Frozen dataclasses: a policy cannot mutate them.

Units: GPU amounts are in GPUs (floats: 0.5 = half a GPU; a MIG slice 1g of 7 = 1/7);
memory in bytes; times in seconds; ``order`` fields are ranks (smaller = older).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

JobKind = Literal["train", "interactive"]


@dataclass(frozen=True)
class MigSliceView:
    """One MIG instance of a GPU, schedulable on its own.

    ``id`` is unique within its node (e.g. ``"0:1g.10gb:3"``); ``compute_slices`` is the
    instance's share of the GPU's 7 compute slices (1g = 1, 2g = 2, 3g = 3, 4g = 4, 7g = 7).
    """

    id: str
    gpu: int
    profile: str
    compute_slices: int
    memory_bytes: int
    busy_unmanaged: bool = False


@dataclass(frozen=True)
class DeviceView:
    """One GPU of a node.

    ``busy_unmanaged``: used by work Corral did not start (never handed out).
    ``mig``: the GPU is MIG-partitioned; only its slices are schedulable, never the GPU.
    """

    index: int
    uuid: str
    memory_bytes: int
    busy_unmanaged: bool = False
    mig: tuple[MigSliceView, ...] = ()


@dataclass(frozen=True)
class NodeView:
    """A node as the scheduler sees it. Only ``schedulable`` nodes receive new jobs."""

    name: str
    schedulable: bool
    devices: tuple[DeviceView, ...]
    cpu_cores: int = 0
    memory_bytes: int = 0
    pool: str = "default"
    containers: bool = False  # its agent can run container jobs (a Docker engine)


@dataclass(frozen=True)
class ProjectView:
    """A project (or a department: a project that other projects name as ``parent``).

    ``quota``: guaranteed GPUs (may be fractional). ``weight``: over-quota weight (None:
    equal to the quota). ``limit``: hard cap on GPUs in use (None: no cap). ``priority``:
    queue priority, higher is served first and reclaimed last. ``pools``: node pools it
    may use (None: all). ``order``: creation order, the tie-breaker ("the older project").
    """

    name: str
    quota: float = 0.0
    weight: float | None = None
    limit: float | None = None
    priority: int = 0
    pools: tuple[str, ...] | None = None
    parent: str | None = None
    order: int = 0

    @property
    def over_quota_weight(self) -> float:
        return self.quota if self.weight is None else self.weight


@dataclass(frozen=True)
class Placement:
    """Where one worker of a job runs: whole GPUs, one shared GPU, or one MIG slice.

    For a fractional job ``gpu_ids`` holds the one shared GPU; for a MIG job it holds the
    parent GPU and ``mig_slice`` the slice id.
    """

    node: str
    gpu_ids: tuple[int, ...]
    mig_slice: str | None = None


@dataclass(frozen=True)
class JobView:
    """A job that holds devices (``placements`` set) or waits for them (empty).

    Per worker it asks for exactly one of: ``gpus`` whole GPUs (an integer ≥ 0), a
    fraction ``gpus`` < 1 of one GPU, ``gpu_memory_bytes`` of one GPU, or one MIG slice
    of ``mig_profile``. ``workers`` > 1 makes a gang: all workers start together or none.
    ``order`` is the submission order; ``priority`` ranks jobs inside a project.
    """

    id: int
    name: str
    project: str
    order: int
    kind: JobKind = "train"
    priority: int = 0
    gpus: float = 0.0
    gpu_memory_bytes: int | None = None
    mig_profile: str | None = None
    workers: int = 1
    pool: str | None = None
    cpus: float | None = None
    memory_bytes: int | None = None
    placements: tuple[Placement, ...] = ()
    container: bool = False  # runs as a container: only on nodes with ``containers``


@dataclass(frozen=True)
class SchedulerConfig:
    """Cluster-wide policy settings.

    ``usage_half_life``: seconds; when set, time-decayed usage (``Snapshot.usage``) breaks
    ties between projects: the one that used more recently yields first. None = off.
    """

    usage_half_life: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything a policy may look at.

    ``running`` jobs hold devices; ``pending`` jobs wait. ``usage`` maps a project to its
    time-decayed GPU usage in GPU-seconds (only read when the half-life is set).
    """

    nodes: tuple[NodeView, ...]
    running: tuple[JobView, ...]
    pending: tuple[JobView, ...]
    projects: tuple[ProjectView, ...] = ()
    usage: Mapping[str, float] = field(default_factory=dict)
    config: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass(frozen=True)
class Binding:
    """Start job ``job_id`` at ``placements`` (one per worker, rank order)."""

    job_id: int
    placements: tuple[Placement, ...]

    @property
    def node(self) -> str:
        """The first worker's node (all of them for a one-worker job)."""
        return self.placements[0].node

    @property
    def gpu_ids(self) -> tuple[int, ...]:
        return self.placements[0].gpu_ids


@dataclass(frozen=True)
class Preemption:
    """Stop running train job ``job_id`` (whole gang) so that ``by_job_id`` can start.

    ``reason`` is for people, e.g. ``"reclaim: team-d is below its quota"``.
    """

    job_id: int
    by_job_id: int
    reason: str


@dataclass(frozen=True)
class ProjectShare:
    """One project's numbers after a cycle (GPUs): what `corral project list` shows."""

    quota: float
    fair_share: float
    allocated: float
    pending: int


@dataclass
class Decisions:
    """What a policy decided in one cycle.

    ``bindings`` may use devices that ``preemptions`` free in the same cycle (the real
    system starts such a job once its victims are gone). ``reasons`` explains every job
    left pending, in words a researcher understands. ``queue`` lists the ids of the jobs
    still pending in the order the policy considered them (what `corral queue` shows).
    """

    bindings: list[Binding] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    projects: dict[str, ProjectShare] = field(default_factory=dict)
    queue: list[int] = field(default_factory=list)


class Policy(Protocol):
    """A scheduling policy: one cycle over a snapshot."""

    def schedule(self, snapshot: Snapshot) -> Decisions: ...
