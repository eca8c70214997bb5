"""What is free on the cluster during one cycle, indexed for O(1) best fit.

Built once per cycle from the snapshot (no copies of it), then changed in place as the
policy binds and preempts. Only schedulable nodes are indexed: nothing new is ever
placed on the others, and their running jobs are never chosen as victims (the GPUs they
would free could not be handed out), so their devices need no bookkeeping.

Per partition of a node pool (its nodes that can run container jobs, and the others;
most pools have one partition):

* ``buckets[k]``: schedulable nodes with exactly ``k`` free whole GPUs, as a sorted list
  of node indices. Best fit for ``k`` GPUs is the first node of the first non-empty
  bucket ``>= k``; the largest free block is the last non-empty bucket. Moving a node
  between buckets is a bisect on lists of at most a few thousand ints.
* ``shared``: GPUs that hold fractional jobs, sorted by free memory (bytes) and by free
  fraction, so the fullest GPU that still fits a fractional job is one bisect away.
* ``mig[profile]``: nodes with free MIG slices of that profile, and how many.

Units: memory in bytes, CPUs in cores.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator

from corral.scheduler.model import NodeView, Snapshot
from corral.scheduler.units import MIG_COMPUTE_SLICES


class NodeState:
    """What is free on one schedulable node."""

    __slots__ = (
        "cpus",
        "free",
        "gpu_memory",
        "idx",
        "memory",
        "mig_free",
        "mig_slices",
        "name",
        "pool",
        "shared_free",
        "shared_jobs",
    )

    def __init__(self, idx: int, view: NodeView, pool: int) -> None:
        self.idx = idx
        self.name = view.name
        self.pool = pool
        self.gpu_memory: dict[int, int] = {}
        """Memory (bytes) of each GPU that can be handed out whole or shared."""
        self.mig_slices: dict[str, tuple[int, str]] = {}
        """Managed MIG slice id → (its GPU, its profile)."""
        self.mig_free: dict[str, list[str]] = {}
        for device in view.devices:
            if device.mig:
                for mig in device.mig:
                    if not mig.busy_unmanaged and not device.busy_unmanaged:
                        self.mig_slices[mig.id] = (device.index, mig.profile)
                        self.mig_free.setdefault(mig.profile, []).append(mig.id)
            elif not device.busy_unmanaged:
                self.gpu_memory[device.index] = device.memory_bytes
        for ids in self.mig_free.values():
            ids.sort()
        self.free: list[int] = sorted(self.gpu_memory)
        """Whole GPUs nobody holds, ascending."""
        self.shared_free: dict[int, int] = {}
        """GPUs holding fractional jobs → their free memory (bytes)."""
        self.shared_jobs: dict[int, int] = {}
        """GPUs holding fractional jobs → how many."""
        self.cpus = float(view.cpu_cores)
        self.memory = view.memory_bytes

    def host_fits(self, cpus: float, memory: int, workers: int = 1) -> bool:
        """Room for ``workers`` x (``cpus`` cores, ``memory`` bytes) of host resources."""
        return self.cpus + 1e-9 >= cpus * workers and self.memory >= memory * workers


class SharedIndex:
    """Shared GPUs of one pool, sorted by free bytes and by free fraction of their memory."""

    __slots__ = ("by_bytes", "by_fraction", "entries")

    def __init__(self) -> None:
        self.by_bytes: list[tuple[int, int, int]] = []
        self.by_fraction: list[tuple[float, int, int]] = []
        self.entries: dict[tuple[int, int], tuple[int, float]] = {}

    def set(self, node: int, gpu: int, free_bytes: int | None, total_bytes: int) -> None:
        """Record the free memory of a shared GPU (None: no longer shared)."""
        old = self.entries.pop((node, gpu), None)
        if old is not None:
            del self.by_bytes[bisect_left(self.by_bytes, (old[0], node, gpu))]
            del self.by_fraction[bisect_left(self.by_fraction, (old[1], node, gpu))]
        if free_bytes is not None:
            fraction = free_bytes / total_bytes if total_bytes else 0.0
            self.entries[(node, gpu)] = (free_bytes, fraction)
            insort(self.by_bytes, (free_bytes, node, gpu))
            insort(self.by_fraction, (fraction, node, gpu))

    def at_least_bytes(self, need: int) -> Iterator[tuple[int, int]]:
        """(node, gpu) of shared GPUs with ``need`` bytes free, fullest first."""
        for _, node, gpu in self.by_bytes[bisect_left(self.by_bytes, (need, -1, -1)) :]:
            yield node, gpu

    def at_least_fraction(self, need: float) -> Iterator[tuple[int, int]]:
        """(node, gpu) of shared GPUs with ``need`` of their memory free, fullest first."""
        start = bisect_left(self.by_fraction, (need - 1e-9, -1, -1))
        for _, node, gpu in self.by_fraction[start:]:
            yield node, gpu


class Pool:
    """One partition of a node pool: its schedulable nodes that can (``containers``) or
    cannot run container jobs, indexed by what they have free. A job may use any
    partition of its pools; a container job only those with ``containers``."""

    __slots__ = (
        "buckets",
        "capacity",
        "containers",
        "largest_gpu_memory",
        "max_gpus",
        "mig",
        "mig_profiles",
        "name",
        "nodes",
        "reserved",
        "shared",
        "unmanaged",
    )

    def __init__(self, name: str, containers: bool = False) -> None:
        self.name = name
        self.containers = containers
        self.unmanaged = 0
        """GPUs of its schedulable nodes in use by work Corral did not start."""
        self.reserved = 0
        """How many projects are confined to some pools including this one (placement
        prefers pools with fewer: see `corral.scheduler.place`)."""
        self.nodes: list[int] = []
        self.buckets: list[list[int]] = [[]]
        self.max_gpus = 0
        """Most whole-capable GPUs on one schedulable node of the pool."""
        self.largest_gpu_memory = 0
        """Largest GPU (bytes) on any node of the pool, schedulable or not."""
        self.capacity = 0.0
        """GPUs of its schedulable nodes that can be handed out (MIG slices as sevenths)."""
        self.shared = SharedIndex()
        self.mig: dict[str, dict[int, int]] = {}
        self.mig_profiles: set[str] = set()

    def largest_free(self) -> int:
        """Most free whole GPUs on one node of the pool."""
        for k in range(len(self.buckets) - 1, 0, -1):
            if self.buckets[k]:
                return k
        return 0

    def best_fit(self, k: int) -> int | None:
        """The node with the fewest free whole GPUs that still has ``k`` (lowest index)."""
        for bucket in self.buckets[max(k, 1) :]:
            if bucket:
                return bucket[0]
        return None

    def nodes_with(self, k: int) -> Iterator[int]:
        """Nodes with at least ``k`` free whole GPUs, best fit first."""
        for bucket in self.buckets[max(k, 0) :]:
            yield from bucket

    def worker_slots(self, k: int) -> int:
        """How many ``k``-GPU workers fit on free GPUs of this pool (several per node)."""
        return sum(len(self.buckets[j]) * (j // k) for j in range(k, len(self.buckets)))


class ClusterState:
    """Free devices of every schedulable node, by pool. Changed in place during a cycle."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.nodes: list[NodeState] = []
        self.node_index: dict[str, int] = {}
        self.pools: list[Pool] = []
        """The partitions of the node pools (see `Pool`), by pool name then containers."""
        self.pool_index: dict[str, tuple[int, ...]] = {}
        """A pool's name → the indices of its partitions in ``pools``."""
        partition: dict[tuple[str, bool], int] = {}
        self.total_nodes = len(snapshot.nodes)
        self.capacity = 0.0
        """GPUs of schedulable nodes that may be handed out (GPUs; MIG slices as sevenths)."""
        for name, containers in sorted({(n.pool, n.containers) for n in snapshot.nodes}):
            partition[name, containers] = len(self.pools)
            self.pool_index[name] = (*self.pool_index.get(name, ()), len(self.pools))
            self.pools.append(Pool(name, containers))
        self.mig_profile_slices: dict[str, int] = {}
        """Compute slices of every MIG profile seen on any node."""
        for view in snapshot.nodes:
            pool_idx = partition[view.pool, view.containers]
            pool = self.pools[pool_idx]
            for device in view.devices:
                if not device.mig:
                    pool.largest_gpu_memory = max(pool.largest_gpu_memory, device.memory_bytes)
                if device.busy_unmanaged and view.schedulable:
                    pool.unmanaged += 1
                for mig in device.mig:
                    self.mig_profile_slices.setdefault(mig.profile, mig.compute_slices)
            if not view.schedulable or view.name in self.node_index:
                continue  # nothing is placed there (a repeated name: the first one counts)
            state = NodeState(len(self.nodes), view, pool=pool_idx)
            self.node_index[view.name] = state.idx
            self.nodes.append(state)
            pool.nodes.append(state.idx)
            pool.max_gpus = max(pool.max_gpus, len(state.gpu_memory))
            pool.mig_profiles.update(state.mig_free)
            node_capacity = len(state.gpu_memory) + sum(
                self.mig_profile_slices[profile] * len(ids)
                for profile, ids in state.mig_free.items()
            ) / float(MIG_COMPUTE_SLICES)
            pool.capacity += node_capacity
            self.capacity += node_capacity
        for pool in self.pools:
            pool.buckets = [[] for _ in range(pool.max_gpus + 1)]
            for idx in pool.nodes:  # ascending already: nodes are numbered in order
                node = self.nodes[idx]
                pool.buckets[len(node.free)].append(idx)
                for profile, ids in node.mig_free.items():
                    pool.mig.setdefault(profile, {})[idx] = len(ids)

    # ------------------------------------------------------------------ whole GPUs

    def take_whole(self, node: NodeState, gpus: tuple[int, ...]) -> None:
        """Mark ``gpus`` of ``node`` as held (ignores GPUs that are not free)."""
        before = len(node.free)
        for gpu in gpus:
            i = bisect_left(node.free, gpu)
            if i < len(node.free) and node.free[i] == gpu:
                del node.free[i]
        self._moved(node, before)

    def release_whole(self, node: NodeState, gpus: tuple[int, ...]) -> None:
        """Mark ``gpus`` of ``node`` as free again."""
        before = len(node.free)
        for gpu in gpus:
            if gpu in node.gpu_memory and gpu not in node.shared_free:
                i = bisect_left(node.free, gpu)
                if i == len(node.free) or node.free[i] != gpu:
                    node.free.insert(i, gpu)
        self._moved(node, before)

    def _moved(self, node: NodeState, before: int) -> None:
        after = len(node.free)
        if after != before:
            buckets = self.pools[node.pool].buckets
            old = buckets[before]
            del old[bisect_left(old, node.idx)]
            insort(buckets[after], node.idx)

    # ------------------------------------------------------------------ shared GPUs

    def take_share(self, node: NodeState, gpu: int, n_bytes: int) -> None:
        """A fractional job takes ``n_bytes`` of ``gpu`` (a free GPU becomes shared)."""
        total = node.gpu_memory.get(gpu)
        if total is None:
            return
        if gpu not in node.shared_free:
            self.take_whole(node, (gpu,))
            node.shared_free[gpu] = total
            node.shared_jobs[gpu] = 0
        node.shared_free[gpu] -= n_bytes
        node.shared_jobs[gpu] += 1
        self.pools[node.pool].shared.set(node.idx, gpu, node.shared_free[gpu], total)

    def release_share(self, node: NodeState, gpu: int, n_bytes: int) -> None:
        """A fractional job gives back ``n_bytes`` of ``gpu``; the last one frees the GPU."""
        if gpu not in node.shared_free:
            return
        node.shared_jobs[gpu] -= 1
        node.shared_free[gpu] += n_bytes
        shared = self.pools[node.pool].shared
        if node.shared_jobs[gpu] <= 0:
            del node.shared_free[gpu]
            del node.shared_jobs[gpu]
            shared.set(node.idx, gpu, None, 0)
            self.release_whole(node, (gpu,))
        else:
            shared.set(node.idx, gpu, node.shared_free[gpu], node.gpu_memory[gpu])

    # ------------------------------------------------------------------ MIG slices

    def take_mig(self, node: NodeState, slice_id: str) -> None:
        info = node.mig_slices.get(slice_id)
        if info is None:
            return
        ids = node.mig_free.get(info[1], [])
        i = bisect_left(ids, slice_id)
        if i < len(ids) and ids[i] == slice_id:
            del ids[i]
            self._mig_count(node, info[1])

    def release_mig(self, node: NodeState, slice_id: str) -> None:
        info = node.mig_slices.get(slice_id)
        if info is None:
            return
        ids = node.mig_free.setdefault(info[1], [])
        i = bisect_left(ids, slice_id)
        if i == len(ids) or ids[i] != slice_id:
            ids.insert(i, slice_id)
            self._mig_count(node, info[1])

    def _mig_count(self, node: NodeState, profile: str) -> None:
        counts = self.pools[node.pool].mig.setdefault(profile, {})
        if node.mig_free[profile]:
            counts[node.idx] = len(node.mig_free[profile])
        else:
            counts.pop(node.idx, None)

    # ------------------------------------------------------------------ host resources

    def take_host(self, node: NodeState, cpus: float, memory: int) -> None:
        node.cpus -= cpus
        node.memory -= memory

    def release_host(self, node: NodeState, cpus: float, memory: int) -> None:
        node.cpus += cpus
        node.memory += memory
