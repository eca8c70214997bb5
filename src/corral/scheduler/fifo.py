"""First placement policy: oldest job first, whole GPUs, best fit.

Jobs are taken in submission order. A job that does not fit is skipped (with a reason)
rather than blocking the queue, so small jobs behind a large one still start — the
fair-share scheduler of issue 3 replaces this with quota-aware ordering. Among nodes
where a job fits, the one with the fewest free GPUs wins (best fit), which keeps whole
nodes free for large jobs.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.scheduler.model import Binding, Decisions, JobView, NodeView, Placement, Snapshot


@dataclass
class _Free:
    """What is still free on one node during a cycle."""

    node: NodeView
    gpus: list[int]
    cpus: float
    memory_bytes: int


def _free_capacity(snapshot: Snapshot) -> dict[str, _Free]:
    free: dict[str, _Free] = {}
    for node in snapshot.nodes:
        free[node.name] = _Free(
            node=node,
            gpus=[d.index for d in node.devices if not d.busy_unmanaged],
            cpus=float(node.cpu_cores),
            memory_bytes=node.memory_bytes,
        )
    for job in snapshot.running:
        for placement in job.placements:
            slot = free.get(placement.node)
            if slot is None:
                continue
            slot.gpus = [g for g in slot.gpus if g not in placement.gpu_ids]
            slot.cpus -= job.cpus or 0.0
            slot.memory_bytes -= job.memory_bytes or 0
    return free


def _fits(job: JobView, slot: _Free) -> bool:
    return (
        slot.node.schedulable
        and len(slot.gpus) >= int(job.gpus)
        and (job.cpus is None or slot.cpus >= job.cpus)
        and (job.memory_bytes is None or slot.memory_bytes >= job.memory_bytes)
    )


def _why_not(job: JobView, free: dict[str, _Free]) -> str:
    ready = [s for s in free.values() if s.node.schedulable]
    if not free:
        return "no nodes have joined the cluster yet"
    if not ready:
        return "no node is ready (all are not ready, down or cordoned)"
    biggest = max(ready, key=lambda s: len(s.gpus))
    if len(biggest.gpus) < job.gpus:
        want = f"{job.gpus:g} free GPU{'s' if job.gpus != 1 else ''}"
        if not biggest.gpus:
            total = sum(len(s.node.devices) for s in ready)
            return f"waiting for {want} on one node (all {total} GPUs of ready nodes are in use)"
        return (
            f"waiting for {want} on one node "
            f"(most free now: {len(biggest.gpus)} on {biggest.node.name})"
        )
    if job.cpus is not None and all(s.cpus < job.cpus for s in ready):
        return f"waiting for {job.cpus:g} free CPU cores on one node"
    return "waiting for a node with enough free memory"


class FifoPolicy:
    """Oldest first, skip what does not fit, best-fit node choice."""

    def schedule(self, snapshot: Snapshot) -> Decisions:
        decisions = Decisions()
        free = _free_capacity(snapshot)
        for job in sorted(snapshot.pending, key=lambda j: j.order):
            if (
                job.gpus != int(job.gpus)
                or job.gpu_memory_bytes
                or job.mig_profile
                or job.workers != 1
            ):
                decisions.reasons[job.id] = (
                    "the FIFO policy places only single-worker jobs of whole GPUs"
                )
                decisions.queue.append(job.id)
                continue
            candidates = [s for s in free.values() if _fits(job, s)]
            if not candidates:
                decisions.reasons[job.id] = _why_not(job, free)
                decisions.queue.append(job.id)
                continue
            # Best fit: fewest free GPUs left after placing; ties by name for determinism.
            slot = min(candidates, key=lambda s: (len(s.gpus) - job.gpus, s.node.name))
            taken = tuple(sorted(slot.gpus)[: int(job.gpus)])
            slot.gpus = [g for g in slot.gpus if g not in taken]
            slot.cpus -= job.cpus or 0.0
            slot.memory_bytes -= job.memory_bytes or 0
            decisions.bindings.append(
                Binding(job_id=job.id, placements=(Placement(slot.node.name, taken),))
            )
        return decisions
