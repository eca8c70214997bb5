"""Monitoring in the scheduler's store: GPUs busy with work Corral did not start."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from corral.core.states import JobState
from corral.core.telemetry import ClusterNow, GpuNow, JobRef, NodeNow
from corral.scheduler import ProjectShare
from corral.scheduler.units import MIG_COMPUTE_SLICES, mig_profile_slices
from corral.server.metrics.hub import MetricsHub
from corral.server.services.nodes import HOLDING_STATES, node_event
from corral.store.models import Job, JobWorker, MigInstance, Node, Project, User


def apply_unmanaged(
    session: Session,
    node: Node,
    gpus: dict[int, str | None],
    mig: dict[str, str | None],
    now: datetime,
) -> bool:
    """Record who uses which GPU / MIG instance of ``node`` outside Corral (None: nobody).

    Returns True when something changed (the scheduler then has a new picture). Each
    change is a node event, so an admin sees when and by whom a GPU was taken.
    """
    changed = False
    for gpu in node.gpus:
        if gpu.index not in gpus or gpus[gpu.index] == gpu.unmanaged:
            continue
        new = gpus[gpu.index]
        message = (
            f"GPU {gpu.index} in use outside Corral by {new}: not scheduled until it is free"
            if new
            else f"GPU {gpu.index} no longer used outside Corral"
        )
        node_event(session, node, "unmanaged", message, now)
        gpu.unmanaged = new
        changed = True
    if mig:
        for instance in session.scalars(select(MigInstance).where(MigInstance.node_id == node.id)):
            if instance.uuid not in mig or mig[instance.uuid] == instance.unmanaged:
                continue
            new = mig[instance.uuid]
            what = f"MIG {instance.profile} instance {instance.uuid} of GPU {instance.gpu_index}"
            node_event(
                session,
                node,
                "unmanaged",
                f"{what} in use outside Corral by {new}" if new else f"{what} free again",
                now,
            )
            instance.unmanaged = new
            changed = True
    return changed


def unmanaged_now(
    session: Session, node: Node
) -> tuple[dict[int, str | None], dict[str, str | None]]:
    """What the store says now (to compare with a sample before opening a write)."""
    gpus = {g.index: g.unmanaged for g in node.gpus}
    mig = {
        m.uuid: m.unmanaged
        for m in session.scalars(select(MigInstance).where(MigInstance.node_id == node.id))
    }
    return gpus, mig


def _share(gpus: float, gpu_memory_bytes: int | None, mig_profile: str | None) -> str | None:
    if mig_profile is not None:
        return f"mig {mig_profile}"
    if gpu_memory_bytes is not None:
        return f"{gpu_memory_bytes / 1024**3:g}GiB"
    if 0 < gpus < 1:
        return f"{gpus:g}"
    return None


def cluster_now(session: Session, hub: MetricsHub, now: datetime) -> ClusterNow:
    """Every node, its GPUs with the jobs holding them and who uses them outside Corral,
    and the newest sample the node sent."""
    jobs = session.execute(
        select(
            Job.id,
            Job.name,
            Project.name.label("project"),
            User.name.label("user"),
            Job.gpus,
            Job.gpu_memory_bytes,
            Job.mig_profile,
            Job.workers,
            Job.node_id,
            Job.gpu_ids,
        )
        .join(Project, Project.id == Job.project_id)
        .join(User, User.id == Job.user_id)
        .where(Job.state.in_(HOLDING_STATES))
        .order_by(Job.id)
    ).all()
    holders: dict[tuple[int, int], list[JobRef]] = {}
    gangs = {j.id: j for j in jobs if j.workers > 1}
    for j in jobs:
        if j.workers > 1 or j.node_id is None:
            continue
        ref = JobRef(
            id=j.id,
            name=j.name,
            project=j.project,
            user=j.user,
            share=_share(j.gpus, j.gpu_memory_bytes, j.mig_profile),
        )
        for gpu in j.gpu_ids:
            holders.setdefault((j.node_id, gpu), []).append(ref)
    if gangs:
        for w in session.execute(
            select(JobWorker.job_id, JobWorker.rank, JobWorker.node_id, JobWorker.gpu_ids).where(
                JobWorker.job_id.in_(list(gangs))
            )
        ):
            j = gangs[w.job_id]
            ref = JobRef(
                id=j.id,
                name=j.name,
                project=j.project,
                user=j.user,
                rank=w.rank,
                workers=j.workers,
            )
            for gpu in w.gpu_ids:
                holders.setdefault((w.node_id, gpu), []).append(ref)
    latest = hub.latest()
    nodes = []
    for node in session.scalars(select(Node).order_by(Node.name)):
        newest = latest.get(node.name)
        samples = {g.index: g for g in newest.sample.gpus} if newest else {}
        nodes.append(
            NodeNow(
                name=node.name,
                state=node.state,
                pool=node.pool,
                simulated=node.simulated,
                last_heartbeat=node.last_heartbeat,
                sampled_at=newest.sample.at if newest else None,
                gpus=[
                    GpuNow(
                        index=g.index,
                        uuid=g.uuid,
                        model=g.model,
                        memory_bytes=g.memory_bytes,
                        jobs=holders.get((node.id, g.index), []),
                        unmanaged=g.unmanaged,
                        sample=samples.get(g.index),
                    )
                    for g in node.gpus
                ],
                host=newest.sample.host if newest else None,
            )
        )
    return ClusterNow(at=now, nodes=nodes)


def usage_rows(
    session: Session, shares: dict[str, ProjectShare], t: int
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """One history row per project (quota, fair share, allocated, pending; from the last
    scheduling cycle) and per user with jobs holding GPUs now (GPUs held, counting a
    fraction as itself and a MIG instance as its share of the GPU's 7 compute slices)."""
    projects: list[dict[str, object]] = [
        {
            "project": name,
            "t": t,
            "quota_gpus": share.quota,
            "fair_share_gpus": share.fair_share,
            "allocated_gpus": share.allocated,
            "pending_jobs": float(share.pending),
        }
        for name, share in sorted(shares.items())
    ]
    held: dict[str, list[float]] = {}
    for user, gpus, workers, mig in session.execute(
        select(User.name, Job.gpus, Job.workers, Job.mig_profile)
        .join(User, User.id == Job.user_id)
        .where(Job.state.in_(HOLDING_STATES))
    ):
        amount = gpus * workers
        if mig is not None:
            amount = (mig_profile_slices(mig) or 0) / MIG_COMPUTE_SLICES
        entry = held.setdefault(user, [0.0, 0.0])
        entry[0] += amount
        entry[1] += 1
    users: list[dict[str, object]] = [
        {"user": user, "t": t, "allocated_gpus": gpus, "running_jobs": jobs}
        for user, (gpus, jobs) in sorted(held.items())
    ]
    return projects, users


@dataclass(frozen=True)
class ClusterSummary:
    """The overview's numbers: nodes by state, GPUs by use, jobs, utilization now."""

    nodes: dict[str, int]
    gpus_total: int
    gpus_allocated: int
    gpus_idle_allocated: int  # held by a job but under IDLE_PERCENT busy
    gpus_free: int
    gpus_unmanaged: int
    jobs_running: int
    jobs_pending: int
    utilization_percent: float | None  # mean over GPUs with a sample; None: no samples


IDLE_PERCENT = 5.0


def summarize(session: Session, now: ClusterNow) -> ClusterSummary:
    nodes: dict[str, int] = {}
    total = allocated = idle = free = unmanaged = 0
    utils: list[float] = []
    for node in now.nodes:
        nodes[node.state] = nodes.get(node.state, 0) + 1
        for gpu in node.gpus:
            total += 1
            util = gpu.sample.utilization_percent if gpu.sample is not None else None
            if util is not None:
                utils.append(util)
            if gpu.unmanaged:
                unmanaged += 1
            elif gpu.jobs:
                allocated += 1
                if util is not None and util < IDLE_PERCENT:
                    idle += 1
            elif node.state == "ready":
                free += 1
    counts: dict[str, int] = {}
    for state, count in session.execute(
        select(Job.state, func.count())
        .where(Job.state.in_([JobState.RUNNING.value, JobState.PENDING.value]))
        .group_by(Job.state)
    ):
        counts[state] = count
    return ClusterSummary(
        nodes=nodes,
        gpus_total=total,
        gpus_allocated=allocated,
        gpus_idle_allocated=idle,
        gpus_free=free,
        gpus_unmanaged=unmanaged,
        jobs_running=int(counts.get(JobState.RUNNING.value, 0)),
        jobs_pending=int(counts.get(JobState.PENDING.value, 0)),
        utilization_percent=sum(utils) / len(utils) if utils else None,
    )


def cluster_row(summary: ClusterSummary, t: int) -> dict[str, object]:
    """The summary as one row of the cluster history."""
    return {
        "cluster": "all",
        "t": t,
        "utilization_percent": summary.utilization_percent,
        "gpus_total": float(summary.gpus_total),
        "gpus_allocated": float(summary.gpus_allocated),
        "gpus_unmanaged": float(summary.gpus_unmanaged),
        "jobs_running": float(summary.jobs_running),
        "jobs_pending": float(summary.jobs_pending),
    }
