"""Where a scenario's running jobs sit: checked against a ledger of held devices.

A running job names its node (one per worker for gangs) and GPU ids (a list per worker
for gangs). The ledger checks that each device exists, may be handed out (not
MIG-partitioned for whole jobs, not busy with unmanaged work), lies in a pool the job may
use, and is not held twice — whole GPUs by one job, shared GPUs by fractional jobs whose
parts add up to at most the GPU's memory, MIG slices by one job each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.scheduler.model import MigSliceView, Placement
from corral.scheduler.scenario_fields import Reader, show


@dataclass
class NodeSpec:
    """A scenario node as the ledger needs it. Memory in bytes."""

    name: str
    pool: str
    gpus: int
    gpu_memory: int
    unmanaged: set[int] = field(default_factory=set)
    mig: dict[int, list[MigSliceView]] = field(default_factory=dict)
    mig_slices_used: dict[int, int] = field(default_factory=dict)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Ledger:
    """Who holds which device so far, while the jobs of a scenario are read."""

    def __init__(self, nodes: dict[str, NodeSpec]) -> None:
        self.nodes = nodes
        self.whole: dict[tuple[str, int], str] = {}
        self.shared: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self.mig: dict[tuple[str, str], str] = {}

    def place(
        self,
        r: Reader,
        job: str,
        workers: int,
        gpus: float,
        memory: int | None,
        profile: str | None,
        allowed: set[str] | None,
    ) -> tuple[Placement, ...]:
        """Placements of running ``job`` as the file gives them; () after any problem."""
        node_raw, ids_raw = r.raw("node"), r.raw("gpu_ids")
        if node_raw is None:
            r.bad("node", "a running job needs its node")
            return ()
        uses_gpu = gpus > 0 or memory is not None or profile is not None
        if workers > 1:
            if not isinstance(node_raw, list) or len(node_raw) != workers:
                r.bad("node", f"a gang needs a list of {workers} nodes, one per worker "
                      f"(got {show(node_raw)})")  # fmt: skip
                return ()
            if uses_gpu and (not isinstance(ids_raw, list) or len(ids_raw) != workers):
                r.bad("gpu_ids", f"a gang needs a list of {workers} GPU lists, one per worker "
                      f"(got {show(ids_raw)})")  # fmt: skip
                return ()
            nodes = node_raw
            ids = ids_raw if uses_gpu else [[] for _ in range(workers)]
        else:
            if uses_gpu and ids_raw is None:
                r.bad("gpu_ids", "a running job needs its GPU ids")
                return ()
            nodes, ids = [node_raw], [ids_raw if ids_raw is not None else []]
        specs: list[NodeSpec] = []
        for node in nodes:
            spec = self.nodes.get(node) if isinstance(node, str) else None
            if spec is None:
                r.bad("node", f"unknown node {show(node)}")
                return ()
            if allowed is not None and spec.pool not in allowed:
                r.bad("node", f"{node} is in pool {spec.pool}, which this job may not use "
                      f"(its pools: {', '.join(sorted(allowed)) or 'none'})")  # fmt: skip
                return ()
            specs.append(spec)
        if len({spec.pool for spec in specs}) > 1:
            r.bad("node", "a gang's workers must all be in one pool")
            return ()
        placements: list[Placement] = []
        for spec, worker_ids in zip(specs, ids, strict=True):
            placement = self._worker(r, job, spec, worker_ids, gpus, memory, profile)
            if placement is None:
                return ()
            placements.append(placement)
        return tuple(placements)

    def _worker(
        self,
        r: Reader,
        job: str,
        spec: NodeSpec,
        ids: object,
        gpus: float,
        memory: int | None,
        profile: str | None,
    ) -> Placement | None:
        if not isinstance(ids, list) or not all(_is_int(g) for g in ids):
            r.bad("gpu_ids", f"must be a list of GPU indices (got {show(ids)})")
            return None
        if len(set(ids)) != len(ids):
            r.bad("gpu_ids", f"a GPU is listed twice ({show(ids)})")
            return None
        for gpu in ids:
            if not 0 <= gpu < spec.gpus:
                have = f"GPUs 0-{spec.gpus - 1}" if spec.gpus else "no GPUs"
                r.bad("gpu_ids", f"{spec.name} has no GPU {gpu} (it has {have})")
                return None
            if gpu in spec.unmanaged:
                r.bad("gpu_ids", f"GPU {gpu} of {spec.name} is busy with work Corral did not start")
                return None
        if profile is not None:
            return self._mig_worker(r, job, spec, ids, profile)
        if gpus == 0 and memory is None:
            if ids:
                r.bad("gpu_ids", "this job asks for no GPUs, so it holds none")
                return None
            return Placement(spec.name, ())
        for gpu in ids:
            if gpu in spec.mig:
                r.bad("gpu_ids", f"GPU {gpu} of {spec.name} is MIG-partitioned: only its "
                      "slices can be used (give mig_profile)")  # fmt: skip
                return None
            holder = self.whole.get((spec.name, gpu))
            if holder is not None:
                r.bad("gpu_ids", f"GPU {gpu} of {spec.name} is already held by {holder}")
                return None
        if memory is not None or gpus < 1:
            return self._shared_worker(r, job, spec, ids, gpus, memory)
        if len(ids) != int(gpus):
            r.bad("gpu_ids", f"lists {len(ids)} GPUs, but the job asks for {int(gpus)} per worker")
            return None
        for gpu in ids:
            if (spec.name, gpu) in self.shared:
                others = ", ".join(self.shared[(spec.name, gpu)][1])
                r.bad("gpu_ids", f"GPU {gpu} of {spec.name} is shared by {others}; "
                      "a whole-GPU job cannot use it")  # fmt: skip
                return None
        for gpu in ids:
            self.whole[(spec.name, gpu)] = job
        return Placement(spec.name, tuple(ids))

    def _shared_worker(
        self,
        r: Reader,
        job: str,
        spec: NodeSpec,
        ids: list[int],
        gpus: float,
        memory: int | None,
    ) -> Placement | None:
        if len(ids) != 1:
            r.bad("gpu_ids", f"a fractional job uses one GPU (got {show(ids)})")
            return None
        gpu = ids[0]
        part = gpus if memory is None else memory / spec.gpu_memory
        used, names = self.shared.get((spec.name, gpu), (0.0, []))
        if used + part > 1 + 1e-9:
            holders = ", ".join([*names, job])
            r.bad("gpu_ids", f"GPU {gpu} of {spec.name} would be more than full "
                  f"({holders} use {used + part:.2f} of its memory)")  # fmt: skip
            return None
        self.shared[(spec.name, gpu)] = (used + part, [*names, job])
        return Placement(spec.name, (gpu,))

    def _mig_worker(
        self, r: Reader, job: str, spec: NodeSpec, ids: list[int], profile: str
    ) -> Placement | None:
        if len(ids) != 1:
            r.bad("gpu_ids", f"a MIG job uses one slice of one GPU (got {show(ids)})")
            return None
        gpu = ids[0]
        for mig in spec.mig.get(gpu, ()):
            free = (spec.name, mig.id) not in self.mig
            if mig.profile == profile and not mig.busy_unmanaged and free:
                self.mig[(spec.name, mig.id)] = job
                return Placement(spec.name, (gpu,), mig_slice=mig.id)
        r.bad("gpu_ids", f"GPU {gpu} of {spec.name} has no free {profile} MIG slice")
        return None
