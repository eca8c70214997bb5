"""Reasons: why a job still waits, in words a researcher understands.

Each function returns one sentence without a trailing period, naming the numbers the
reader needs to act (how many GPUs, which pool, the project's share and usage).
"""

from __future__ import annotations

from corral.scheduler.cluster import ClusterState
from corral.scheduler.jobs import JobInfo
from corral.scheduler.projects import ProjectNode, ProjectTree
from corral.scheduler.units import fmt_gib, fmt_gpus, gpus_phrase


def _what(node: ProjectNode) -> str:
    return f"department {node.name}" if node.is_department else f"project {node.name}"


def department_job(tree: ProjectTree, node: ProjectNode) -> str:
    names = ", ".join(tree[c].name for c in node.children)
    return f"project {node.name} is a department: submit to one of its projects ({names})"


def limit_reached(node: ProjectNode) -> str:
    assert node.limit is not None
    return f"{_what(node)} reached its limit ({gpus_phrase(node.limit)})"


def interactive_quota(node: ProjectNode, in_use: float) -> str:
    return (
        f"interactive jobs run only within quota "
        f"({node.name}: quota {fmt_gpus(node.quota)}, in use {fmt_gpus(in_use)})"
    )


def fair_share(node: ProjectNode, allocated: float, fair: float, need: float) -> str:
    numbers = f"{fmt_gpus(allocated)} of {fmt_gpus(fair)} GPUs"
    if allocated > fair + 1e-6:
        return f"{_what(node)} is over its fair share ({numbers})"
    if allocated + 1e-6 >= fair:
        return f"{_what(node)} is at its fair share ({numbers})"
    return f"{_what(node)} would go over its fair share ({numbers}; the job needs {fmt_gpus(need)})"


def _where(cluster: ClusterState, job: JobInfo) -> str:
    names = list(dict.fromkeys(cluster.pools[p].name for p in job.pools))
    if job.container:
        # Only nodes that can run containers are candidates: say so, with the pools.
        where = " with a container engine"
        if len(names) < len(cluster.pool_index):
            where += f" in pool {names[0]}" if len(names) == 1 else f" in pools {', '.join(names)}"
        return where
    if len(job.pools) == len(cluster.pools):
        return ""
    return f" in pool {names[0]}" if len(names) == 1 else f" in pools {', '.join(names)}"


def fmt_count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def never_fits(cluster: ClusterState, job: JobInfo) -> str | None:
    """Why ``job`` cannot start even on an empty cluster as it is now, or None."""
    if cluster.total_nodes == 0:
        return "no nodes have joined the cluster yet"
    where = _where(cluster, job)
    pools = [cluster.pools[p] for p in job.pools]
    if not any(pool.nodes for pool in pools):
        return f"no node{where} is ready (not ready, down or cordoned)"
    if job.shape == "whole":
        largest = max(pool.max_gpus for pool in pools)
        if job.gpus > largest:
            unmanaged = sum(pool.unmanaged for pool in pools)
            if unmanaged:
                return (
                    f"no node{where} has {job.gpus} GPUs Corral can use (largest: {largest}; "
                    f"{fmt_count(unmanaged, 'GPU')} in use outside Corral, see `corral top`)"
                )
            return f"no node{where} has {job.gpus} GPUs (largest: {largest})"
    elif job.shape == "memory":
        largest_memory = max(pool.largest_gpu_memory for pool in pools)
        if job.memory > largest_memory:
            return (
                f"no GPU{where} has {fmt_gib(job.memory)} of memory "
                f"(largest: {fmt_gib(largest_memory)})"
            )
    elif job.shape == "mig" and not any(job.profile in pool.mig_profiles for pool in pools):
        return f"no node{where} has {job.profile} MIG slices"
    return None


def no_room(cluster: ClusterState, job: JobInfo) -> str:
    """Why ``job`` does not fit on the free devices of its pools right now."""
    never = never_fits(cluster, job)
    if never is not None:
        return never
    where = _where(cluster, job)
    if job.shape == "whole":
        return _no_whole(cluster, job, where)
    if job.shape in ("fraction", "memory"):
        return _no_share(cluster, job, where)
    if job.shape == "mig":
        return f"no node{where} has a free {job.profile} MIG slice"
    return f"no node{where} has {_host_need(job)} free"


def _host_need(job: JobInfo) -> str:
    parts = []
    if job.cpus:
        parts.append(f"{job.cpus:g} CPU core{'s' if job.cpus != 1 else ''}")
    if job.host_memory:
        parts.append(f"{fmt_gib(job.host_memory)} of memory")
    return " and ".join(parts) or "room"


def _no_whole(cluster: ClusterState, job: JobInfo, where: str) -> str:
    k = job.gpus
    pools = [cluster.pools[p] for p in job.pools]
    largest = max(pool.max_gpus for pool in pools)
    if job.workers > 1:
        w = job.workers
        if 2 * k > largest:
            have = max(sum(len(b) for b in pool.buckets[k:]) for pool in pools)
            verb = "has" if have == 1 else "have"
            return (
                f"gang needs {w} nodes with {k} free GPUs each in one pool ({have} {verb} them now)"
            )
        room = max(pool.worker_slots(k) for pool in pools)
        return (
            f"gang needs room for {w} workers with {k} free GPUs each in one pool "
            f"(room for {room} now)"
        )
    most, node = 0, ""
    for pool in pools:
        free = pool.largest_free()
        if free > most:
            most, node = free, cluster.nodes[pool.buckets[free][0]].name
    if most >= k:
        return f"no node{where} with {gpus_phrase(k)} free also has {_host_need(job)} free"
    if most == 0:
        return f"no node{where} has {gpus_phrase(k)} free (all GPUs are in use)"
    return f"no node{where} has {gpus_phrase(k)} free (most free: {most}, on {node})"


def _no_share(cluster: ClusterState, job: JobInfo, where: str) -> str:
    pools = [cluster.pools[p] for p in job.pools]
    if job.shape == "memory":
        largest = max(pool.largest_gpu_memory for pool in pools)
        if job.memory > largest:
            return (
                f"no GPU{where} has {fmt_gib(job.memory)} of memory (largest: {fmt_gib(largest)})"
            )
        want = f"{fmt_gib(job.memory)} of GPU memory"
    else:
        want = f"{fmt_gpus(job.fraction)} of a GPU"
    if any(pool.largest_free() for pool in pools):
        return f"no node{where} with room for {want} also has {_host_need(job)} free"
    return f"no GPU{where} has {want} free (no GPU is free, and shared ones are too full)"
