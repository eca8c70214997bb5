"""Jobs as the policy works with them: shape, accounting amount, pools, rank.

`JobInfo` is built once per cycle for every running and pending `JobView` and carries
what the steps need again and again (so nothing is recomputed per comparison):

* ``shape``: what one worker asks for — ``whole`` GPUs, a ``fraction`` of one GPU,
  ``memory`` of one GPU, one ``mig`` slice, or ``host`` only (no GPU); ``invalid`` for
  requests the policy cannot honour (e.g. 1.5 GPUs), which stay pending with a reason.
* ``amount``: GPUs it counts as against quota and fair share (`corral.scheduler.units`).
* ``pools``: indices of the node pools it may use (its own pool and its project's pools
  intersected), or an explanation in ``pool_problem`` when there are none.
* ``rank``: its place in its project's queue; ``victim_rank``: its place in the line of
  victims (lowest job priority first, then newest).
"""

from __future__ import annotations

from typing import Literal

from corral.scheduler.cluster import ClusterState
from corral.scheduler.model import JobView, Placement
from corral.scheduler.projects import ProjectNode
from corral.scheduler.units import EPS, MIG_COMPUTE_SLICES, is_whole, mig_profile_slices

Shape = Literal["whole", "fraction", "memory", "mig", "host", "invalid"]


class JobInfo:
    """One job during one cycle. Amounts in GPUs, memory in bytes."""

    __slots__ = (
        "amount",
        "bound_now",
        "container",
        "cpus",
        "fraction",
        "gone",
        "gpus",
        "host_memory",
        "id",
        "interactive",
        "leaf",
        "memory",
        "name",
        "nodes",
        "order",
        "placements",
        "pool_problem",
        "pools",
        "priority",
        "problem",
        "profile",
        "rank",
        "schedulable",
        "shape",
        "unit",
        "victim_rank",
        "view",
        "workers",
    )

    def __init__(
        self,
        view: JobView,
        leaf: ProjectNode,
        cluster: ClusterState,
        pools_cache: dict[tuple[int, str | None, bool], tuple[tuple[int, ...], str | None]],
    ) -> None:
        self.view = view
        self.id = view.id
        self.name = view.name
        self.leaf = leaf.idx
        self.order = view.order
        self.priority = view.priority
        self.interactive = view.kind == "interactive"
        self.workers = max(1, view.workers)
        self.cpus = float(view.cpus or 0.0)
        self.host_memory = int(view.memory_bytes or 0)
        self.placements: tuple[Placement, ...] = view.placements
        self.gpus = 0
        self.fraction = 0.0
        self.memory = 0
        self.profile = view.mig_profile or ""
        self.problem = ""
        self.bound_now = False
        self.gone = False
        # Interactive jobs rank above train jobs of the same priority (Run:ai's default).
        self.rank = (-view.priority, 0 if self.interactive else 1, view.order, view.id)
        self.victim_rank = (view.priority, -view.order, -view.id)
        self.container = view.container
        key = (leaf.idx, view.pool, view.container)
        if key not in pools_cache:
            pools_cache[key] = _allowed_pools(view, leaf, cluster)
        self.pools, self.pool_problem = pools_cache[key]
        self.shape: Shape = self._shape(view)
        self.unit = self._unit(cluster)
        self.amount = self.unit * self.workers
        self.nodes: tuple[int, ...] = ()
        """Indices of the schedulable nodes it runs on (see `locate`)."""
        self.schedulable = False
        """Running on schedulable nodes only: the devices it would free can be reused."""
        if self.placements:
            self.locate(cluster)

    def _shape(self, view: JobView) -> Shape:
        if view.mig_profile:
            shape: Shape = "mig"
        elif view.gpu_memory_bytes is not None:
            if view.gpu_memory_bytes <= 0:
                self.problem = "asks for no GPU memory: give a positive amount"
                return "invalid"
            self.memory = view.gpu_memory_bytes
            shape = "memory"
        elif view.gpus <= EPS:
            shape = "host"
        elif view.gpus < 1 - EPS:
            self.fraction = view.gpus
            shape = "fraction"
        elif is_whole(view.gpus):
            self.gpus = round(view.gpus)
            shape = "whole"
        else:
            self.problem = (
                f"asks for {view.gpus:g} GPUs: a job gets whole GPUs or a fraction below 1"
            )
            return "invalid"
        if self.workers > 1 and shape in ("fraction", "memory", "mig"):
            self.problem = "a gang's workers get whole GPUs: fractions, memory and MIG are single"
            return "invalid"
        return shape

    def _unit(self, cluster: ClusterState) -> float:
        if self.shape == "whole":
            return float(self.gpus)
        if self.shape == "fraction":
            return self.fraction
        if self.shape == "memory":
            # The largest GPU of its pools, also while it runs, so that binding never
            # changes the project's share (see corral.scheduler.units).
            largest = max((cluster.pools[p].largest_gpu_memory for p in self.pools), default=0)
            return min(1.0, self.memory / largest) if largest > 0 else 1.0
        if self.shape == "mig":
            slices = mig_profile_slices(self.profile) or cluster.mig_profile_slices.get(
                self.profile, 1
            )
            return slices / MIG_COMPUTE_SLICES
        return 0.0

    def locate(self, cluster: ClusterState) -> None:
        """Record the nodes of ``placements`` (after binding, or once for running jobs)."""
        index = cluster.node_index
        found = [index.get(p.node, -1) for p in self.placements]
        self.schedulable = bool(found) and -1 not in found
        self.nodes = tuple(sorted(set(found) - {-1}))

    def share_bytes(self, gpu_memory: int) -> int:
        """Bytes this (fractional or memory) job uses of a GPU with ``gpu_memory`` bytes."""
        if self.shape == "memory":
            return self.memory
        return int(self.fraction * gpu_memory)

    def __repr__(self) -> str:
        return f"JobInfo({self.name!r}, {self.shape}, amount={self.amount:g})"


def _allowed_pools(
    view: JobView, leaf: ProjectNode, cluster: ClusterState
) -> tuple[tuple[int, ...], str | None]:
    """The partitions (`corral.scheduler.cluster.Pool`) the job may use, or why none."""
    allowed = leaf.pools
    if view.pool is not None:
        if allowed is not None and view.pool not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            return (), f"project {leaf.name} may not use pool {view.pool} (its pools: {listed})"
        allowed = frozenset((view.pool,))
    if allowed is None:
        pools = tuple(range(len(cluster.pools)))
    else:
        pools = tuple(sorted(i for p in allowed for i in cluster.pool_index.get(p, ())))
        if not pools:
            names = ", ".join(sorted(allowed))
            return (), f"no node is in pool {names}" if len(allowed) == 1 else (
                f"no node is in pools {names}"
            )
    if view.container:
        with_engine = tuple(p for p in pools if cluster.pools[p].containers)
        if not with_engine:
            where = (
                ""
                if allowed is None
                else (
                    f" in pool {next(iter(allowed))}"
                    if len(allowed) == 1
                    else f" in pools {', '.join(sorted(allowed))}"
                )
            )
            return (), (
                f"a container job needs a node with a container engine (Docker), and no "
                f"node{where} has one: run its agent where Docker is available (see "
                "docs/operations.md)"
            )
        return with_engine, None
    return pools, None
