"""The scheduler's input and output types. Frozen dataclasses: a policy cannot mutate them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class DeviceView:
    """One schedulable GPU of a node. ``busy_unmanaged``: used by work Corral did not start."""

    index: int
    uuid: str
    memory_bytes: int
    busy_unmanaged: bool = False


@dataclass(frozen=True)
class NodeView:
    """A node as the scheduler sees it. Only ``schedulable`` nodes receive new jobs."""

    name: str
    schedulable: bool
    devices: tuple[DeviceView, ...]
    cpu_cores: int
    memory_bytes: int
    pool: str = "default"


@dataclass(frozen=True)
class JobView:
    """A job that holds devices (``node`` set) or waits for them (``node`` None).

    ``order`` is the submission order (smaller = older); ``gpus`` whole GPUs per worker;
    ``cpus`` in cores and ``memory_bytes`` of host RAM, None when not requested.
    """

    id: int
    name: str
    project: str
    order: int
    gpus: int
    cpus: float | None = None
    memory_bytes: int | None = None
    node: str | None = None
    gpu_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """Everything a policy may look at. ``running`` jobs hold devices; ``pending`` wait."""

    nodes: tuple[NodeView, ...]
    running: tuple[JobView, ...]
    pending: tuple[JobView, ...]


@dataclass(frozen=True)
class Binding:
    """Place job ``job_id`` on ``node`` with GPUs ``gpu_ids`` (NVML indices)."""

    job_id: int
    node: str
    gpu_ids: tuple[int, ...]


@dataclass
class Decisions:
    """What a policy decided in one cycle; ``reasons`` explains every job left pending."""

    bindings: list[Binding] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)


class Policy(Protocol):
    """A scheduling policy: one cycle over a snapshot."""

    def schedule(self, snapshot: Snapshot) -> Decisions: ...
