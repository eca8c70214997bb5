"""Placement (rule 6): which free devices a job gets, and marking them taken or free.

* Whole-GPU jobs get whole GPUs on the node with the fewest free GPUs that still has
  enough (best fit), which keeps whole nodes free for large jobs.
* A gang's workers all go to one pool, packed onto the nodes with the fewest free GPUs
  first (several workers per node when they fit); the pool is the one with the fewest
  free GPUs among those where the whole gang fits.
* Fractional and memory jobs share a GPU only with other such jobs: the fullest shared
  GPU that still has room, else a free GPU of the best-fit node. A fraction ``f`` of a
  GPU with ``M`` bytes uses ``f x M`` bytes of it; the used bytes never exceed ``M``.
* A MIG job gets one free slice of its profile, on the node with the fewest such slices.
* CPU and host-memory requests are respected when given (a slower path then walks the
  candidates in the same best-fit order).
* A job that may use several pools prefers the pools fewer projects are confined to
  (`Pool.reserved`), so that it does not take the only GPUs a confined project can use
  while others are free — that would only be reclaimed from it later.

Ties are always broken by node order (the snapshot's), then GPU index: same input,
same placement.
"""

from __future__ import annotations

from collections.abc import Iterable

from corral.scheduler.cluster import ClusterState, NodeState, Pool
from corral.scheduler.jobs import JobInfo
from corral.scheduler.model import Placement


def find_free(
    cluster: ClusterState,
    job: JobInfo,
    *,
    node: int | None = None,
    pool: int | None = None,
) -> tuple[Placement, ...] | None:
    """Placements (one per worker) for ``job`` on free devices, or None if it does not fit.

    ``node`` / ``pool`` restrict the search (used to put a job where its victims were).
    """
    if node is not None:
        pools: Iterable[int] = (cluster.nodes[node].pool,)
    elif pool is not None:
        pools = (pool,)
    else:
        pools = job.pools
    if job.shape == "whole":
        if job.workers > 1:
            return _gang(cluster, job, pools)
        return _whole(cluster, job, pools, node)
    if job.shape in ("fraction", "memory"):
        return _shared(cluster, job, pools, node)
    if job.shape == "mig":
        return _mig(cluster, job, pools, node)
    if job.shape == "host":
        return _host(cluster, job, pools, node)
    return None


def _candidates(pool: Pool, k: int, only: int | None) -> Iterable[int]:
    if only is not None:
        return (only,)
    return pool.nodes_with(k)


def _whole(
    cluster: ClusterState, job: JobInfo, pools: Iterable[int], only: int | None
) -> tuple[Placement, ...] | None:
    k = job.gpus
    best: tuple[int, int, int] | None = None  # (pool reserved, free GPUs, node) so far
    for p in pools:
        pool = cluster.pools[p]
        if only is None and not job.cpus and not job.host_memory:
            idx = pool.best_fit(k)
            if idx is not None:
                key = (pool.reserved, len(cluster.nodes[idx].free), idx)
                best = key if best is None or key < best else best
            continue
        for idx in _candidates(pool, k, only):
            state = cluster.nodes[idx]
            if len(state.free) >= k and state.host_fits(job.cpus, job.host_memory):
                key = (pool.reserved, len(state.free), idx)
                best = key if best is None or key < best else best
                break
    if best is None:
        return None
    state = cluster.nodes[best[2]]
    return (Placement(state.name, tuple(state.free[:k])),)


def _gang(
    cluster: ClusterState, job: JobInfo, pools: Iterable[int]
) -> tuple[Placement, ...] | None:
    k, workers = job.gpus, job.workers
    best: tuple[int, int, int, list[tuple[int, int]]] | None = None
    for p in pools:
        pool = cluster.pools[p]
        if pool.worker_slots(k) < workers:
            continue
        chosen: list[tuple[int, int]] = []  # (node, workers on it)
        missing = workers
        for idx in pool.nodes_with(k):
            state = cluster.nodes[idx]
            fit = len(state.free) // k
            if job.cpus or job.host_memory:
                fit = min(fit, _host_slots(state, job))
            if fit <= 0:
                continue
            n = min(fit, missing)
            chosen.append((idx, n))
            missing -= n
            if missing == 0:
                break
        if missing:
            continue
        free_in_pool = sum(j * len(b) for j, b in enumerate(pool.buckets))
        if best is None or (pool.reserved, free_in_pool, p) < best[:3]:
            best = (pool.reserved, free_in_pool, p, chosen)
    if best is None:
        return None
    placements: list[Placement] = []
    for idx, n in best[3]:
        state = cluster.nodes[idx]
        for w in range(n):
            placements.append(Placement(state.name, tuple(state.free[w * k : (w + 1) * k])))
    return tuple(placements)


def _host_slots(state: NodeState, job: JobInfo) -> int:
    slots = 1 << 30
    if job.cpus:
        slots = min(slots, int((state.cpus + 1e-9) // job.cpus))
    if job.host_memory:
        slots = min(slots, state.memory // job.host_memory)
    return max(0, slots)


def _shared(
    cluster: ClusterState, job: JobInfo, pools: Iterable[int], only: int | None
) -> tuple[Placement, ...] | None:
    # (pool reserved, 0 shared / 1 free GPU, fill, node, gpu) of the best so far
    best: tuple[int, int, int, int, int] | None = None
    for p in pools:
        pool = cluster.pools[p]
        hits = (
            pool.shared.at_least_bytes(job.memory)
            if job.shape == "memory"
            else pool.shared.at_least_fraction(job.fraction)
        )
        for idx, gpu in hits:
            state = cluster.nodes[idx]
            if only is not None and idx != only:
                continue
            if state.shared_free[gpu] < job.share_bytes(state.gpu_memory[gpu]):
                continue  # a fraction of a bigger GPU than the index assumed
            if state.host_fits(job.cpus, job.host_memory):
                key = (pool.reserved, 0, state.shared_free[gpu], idx, gpu)
                best = key if best is None or key < best else best
                break
        if best is not None and best[:2] == (pool.reserved, 0):
            continue
        for idx in _candidates(pool, 1, only):
            state = cluster.nodes[idx]
            free_gpu = next(
                (
                    g
                    for g in state.free
                    if job.share_bytes(state.gpu_memory[g]) <= state.gpu_memory[g]
                ),
                None,
            )
            if free_gpu is not None and state.host_fits(job.cpus, job.host_memory):
                key = (pool.reserved, 1, len(state.free), idx, free_gpu)
                best = key if best is None or key < best else best
                break
    if best is None:
        return None
    return (Placement(cluster.nodes[best[3]].name, (best[4],)),)


def _mig(
    cluster: ClusterState, job: JobInfo, pools: Iterable[int], only: int | None
) -> tuple[Placement, ...] | None:
    best: tuple[int, int, int] | None = None  # (pool reserved, free slices, node)
    for p in pools:
        pool = cluster.pools[p]
        for idx, count in pool.mig.get(job.profile, {}).items():
            if only is not None and idx != only:
                continue
            if not cluster.nodes[idx].host_fits(job.cpus, job.host_memory):
                continue
            if best is None or (pool.reserved, count, idx) < best:
                best = (pool.reserved, count, idx)
    if best is None:
        return None
    state = cluster.nodes[best[2]]
    slice_id = state.mig_free[job.profile][0]
    return (Placement(state.name, (state.mig_slices[slice_id][0],), mig_slice=slice_id),)


def _host(
    cluster: ClusterState, job: JobInfo, pools: Iterable[int], only: int | None
) -> tuple[Placement, ...] | None:
    # No GPU: the first node (in node order) with the CPU and memory it asks for.
    for p in pools:
        for idx in (only,) if only is not None else cluster.pools[p].nodes:
            state = cluster.nodes[idx]
            if state.host_fits(job.cpus, job.host_memory, job.workers):
                return tuple(Placement(state.name, ()) for _ in range(job.workers))
    return None


# ---------------------------------------------------------------------- bookkeeping


def occupy(
    cluster: ClusterState, job: JobInfo, placements: tuple[Placement, ...]
) -> tuple[Placement, ...]:
    """Mark the devices of ``placements`` taken; return them with MIG slices resolved.

    Placements on nodes that are not schedulable (or unknown) are left alone: those
    devices are not indexed. A MIG placement without a slice id gets the first free
    slice of the job's profile on its GPU (what a server that tracks GPUs only sends).
    """
    resolved: list[Placement] = []
    for placement in placements:
        idx = cluster.node_index.get(placement.node)
        if idx is None:
            resolved.append(placement)
            continue
        state = cluster.nodes[idx]
        if job.shape == "mig":
            placement = _resolve_slice(state, job, placement)
            if placement.mig_slice is not None:
                cluster.take_mig(state, placement.mig_slice)
        elif job.shape in ("fraction", "memory"):
            for gpu in placement.gpu_ids[:1]:
                if gpu in state.gpu_memory:
                    cluster.take_share(state, gpu, job.share_bytes(state.gpu_memory[gpu]))
        elif placement.gpu_ids:
            cluster.take_whole(state, placement.gpu_ids)
        if job.cpus or job.host_memory:
            cluster.take_host(state, job.cpus, job.host_memory)
        resolved.append(placement)
    return tuple(resolved)


def vacate(cluster: ClusterState, job: JobInfo) -> None:
    """Mark the devices ``job`` holds free again (its ``placements`` as `occupy` resolved)."""
    for placement in job.placements:
        idx = cluster.node_index.get(placement.node)
        if idx is None:
            continue
        state = cluster.nodes[idx]
        if job.shape == "mig":
            if placement.mig_slice is not None:
                cluster.release_mig(state, placement.mig_slice)
        elif job.shape in ("fraction", "memory"):
            for gpu in placement.gpu_ids[:1]:
                if gpu in state.gpu_memory:
                    cluster.release_share(state, gpu, job.share_bytes(state.gpu_memory[gpu]))
        elif placement.gpu_ids:
            cluster.release_whole(state, placement.gpu_ids)
        if job.cpus or job.host_memory:
            cluster.release_host(state, job.cpus, job.host_memory)


def _resolve_slice(state: NodeState, job: JobInfo, placement: Placement) -> Placement:
    if placement.mig_slice is not None or not placement.gpu_ids:
        return placement
    gpu = placement.gpu_ids[0]
    for slice_id in state.mig_free.get(job.profile, ()):
        if state.mig_slices[slice_id][0] == gpu:
            return Placement(placement.node, placement.gpu_ids, mig_slice=slice_id)
    return placement
