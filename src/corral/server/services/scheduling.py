"""One scheduling cycle against the store: snapshot → policy → apply decisions.

The policy is pure (`corral.scheduler`); this module is the only place that turns rows
into a `Snapshot` and `Decisions` back into rows. Bindings are applied with the
database's guarantee that a GPU has one holder (`GpuAllocation`'s primary key), so a
bug in a policy can not double-book a device.

Preemption hands the victim's devices to the job that preempted it at once: the victim
goes to ``stopping`` with ``preempted_by_id`` set and no allocation rows, the new job is
bound to those devices, and the agent starts it only when the victim is gone (the
assignment's ``after`` list). A stopping victim is therefore not in the snapshot: its
devices are already counted for the job that replaces it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.core.states import JobKind, JobState, NodeState
from corral.scheduler import (
    Decisions,
    DeviceView,
    JobView,
    MigSliceView,
    NodeView,
    Placement,
    Policy,
    Preemption,
    ProjectShare,
    ProjectView,
    SchedulerConfig,
    Snapshot,
)
from corral.server.services.jobs import change_state, notify_job_nodes, release_devices
from corral.server.services.nodes import HOLDING_STATES
from corral.store.models import GpuAllocation, GpuShare, Job, JobWorker, MigInstance, Node, Project

# Rendezvous ports of gangs (MASTER_PORT) are chosen from here, one per gang whose first
# worker is on the node: torch.distributed's default (29500) and up.
MASTER_PORT_BASE = 29500
MASTER_PORTS = 1000


@dataclass
class CycleResult:
    bound: int = 0
    preempted: int = 0
    pending: int = 0
    changed_nodes: set[int] = field(default_factory=set)
    shares: dict[str, ProjectShare] = field(default_factory=dict)
    queue: list[int] = field(default_factory=list)


# Every column `_job_view` reads for a waiting job (one without a node: no placements, so
# no gpu_ids). Jobs are loaded as plain rows of just these (plus gpu_ids and node_id for
# jobs that hold devices), every cycle, the whole queue: ORM objects cost several times
# more.
_QUEUE_COLUMNS = (
    Job.id,
    Job.name,
    Job.project_id,
    Job.kind,
    Job.priority,
    Job.gpus,
    Job.gpu_memory_bytes,
    Job.mig_profile,
    Job.workers,
    Job.pool,
    Job.cpus,
    Job.memory_bytes,
    Job.image,
)


class _QueueViews:
    """The views of the last cycle's waiting jobs, by everything each was made of.

    A waiting job's view is a pure function of its row (`_QUEUE_COLUMNS`) and its
    project's name, so a view whose inputs are unchanged is reused instead of rebuilt
    (with a long queue, building them again was a large part of every cycle). Entries
    the latest cycle did not use are dropped.
    """

    def __init__(self) -> None:
        self._views: dict[tuple[Any, ...], JobView] = {}

    def views(self, rows: Iterable[Row[Any]], project_names: dict[int, str]) -> tuple[JobView, ...]:
        old = self._views
        new: dict[tuple[Any, ...], JobView] = {}
        for row in rows:
            project = project_names[row.project_id]
            key = (tuple(row), project)
            view = old.get(key)
            new[key] = view if view is not None else _job_view(row, project, None)
        self._views = new
        return tuple(new.values())


_queue_views = _QueueViews()


def _job_view(
    job: Row[Any],
    project: str,
    node: str | None,
    workers: tuple[Placement, ...] | None = None,
) -> JobView:
    """A job's view; ``node`` set for a one-worker job that holds devices, ``workers`` the
    placements of a gang that does."""
    if workers is not None:
        placements = workers
    elif node is not None:
        placements = (Placement(node, tuple(job.gpu_ids), mig_slice=job.mig_uuid),)
    else:
        placements = ()
    return JobView(
        id=job.id,
        name=job.name,
        project=project,
        order=job.id,
        kind="interactive" if job.kind == JobKind.INTERACTIVE.value else "train",
        priority=job.priority,
        gpus=job.gpus,
        gpu_memory_bytes=job.gpu_memory_bytes,
        mig_profile=job.mig_profile,
        workers=job.workers,
        pool=job.pool,
        cpus=job.cpus,
        memory_bytes=job.memory_bytes,
        placements=placements,
        container=job.image is not None,
    )


def build_snapshot(session: Session) -> tuple[Snapshot, dict[str, Node]]:
    nodes = {n.name: n for n in session.scalars(select(Node).order_by(Node.name))}
    node_by_id = {n.id: n for n in nodes.values()}
    projects = list(session.scalars(select(Project).order_by(Project.id)))
    project_names = {p.id: p.name for p in projects}
    mig: dict[tuple[int, int], list[MigSliceView]] = {}
    for m in session.scalars(select(MigInstance).order_by(MigInstance.id)):
        mig.setdefault((m.node_id, m.gpu_index), []).append(
            MigSliceView(
                id=m.uuid,
                gpu=m.gpu_index,
                profile=m.profile,
                compute_slices=m.compute_slices,
                memory_bytes=m.memory_bytes,
                busy_unmanaged=m.unmanaged is not None,
            )
        )
    node_views = tuple(
        NodeView(
            name=n.name,
            schedulable=NodeState(n.state).schedulable,
            devices=tuple(
                DeviceView(
                    index=g.index,
                    uuid=g.uuid,
                    memory_bytes=g.memory_bytes,
                    busy_unmanaged=g.unmanaged is not None,
                    mig=tuple(mig.get((n.id, g.index), ())),
                )
                for g in n.gpus
            ),
            cpu_cores=n.cpu_cores,
            memory_bytes=n.memory_bytes,
            pool=n.pool,
            containers=n.container_engine is not None,
        )
        for n in nodes.values()
    )
    project_views = tuple(
        ProjectView(
            name=p.name,
            quota=p.quota,
            weight=p.weight,
            limit=p.limit,
            priority=p.priority,
            pools=tuple(p.pools) if p.pools is not None else None,
            parent=project_names.get(p.parent_id) if p.parent_id else None,
            order=p.id,
        )
        for p in projects
    )
    holding: list[Row[Any]] = list(
        session.execute(
            select(*_QUEUE_COLUMNS, Job.gpu_ids, Job.node_id, Job.mig_uuid).where(
                Job.state.in_(HOLDING_STATES), Job.preempted_by_id.is_(None)
            )
        )
    )
    gangs = _gang_placements(session, [j.id for j in holding if j.workers > 1], node_by_id)
    running = tuple(
        _job_view(
            j,
            project_names[j.project_id],
            node_by_id[j.node_id].name if j.node_id in node_by_id else None,
            gangs.get(j.id) if j.workers > 1 else None,
        )
        for j in holding
    )
    pending = _queue_views.views(
        session.execute(
            select(*_QUEUE_COLUMNS).where(Job.state == JobState.PENDING.value).order_by(Job.id)
        ),
        project_names,
    )
    snapshot = Snapshot(nodes=node_views, running=running, pending=pending, projects=project_views)
    return snapshot, nodes


def _gang_placements(
    session: Session, job_ids: list[int], node_by_id: dict[int, Node]
) -> dict[int, tuple[Placement, ...]]:
    """Each running gang's worker placements, in rank order."""
    if not job_ids:
        return {}
    placements: dict[int, list[Placement]] = {}
    for w in session.execute(
        select(JobWorker.job_id, JobWorker.node_id, JobWorker.gpu_ids)
        .where(JobWorker.job_id.in_(job_ids))
        .order_by(JobWorker.job_id, JobWorker.rank)
    ):
        node = node_by_id.get(w.node_id) if w.node_id is not None else None
        if node is not None:
            placements.setdefault(w.job_id, []).append(Placement(node.name, tuple(w.gpu_ids)))
    return {job_id: tuple(p) for job_id, p in placements.items()}


def _preempt(session: Session, p: Preemption, now: datetime, result: CycleResult) -> None:
    victim = session.get(Job, p.job_id)
    by = session.get(Job, p.by_job_id)
    if victim is None or by is None or not JobState(victim.state).holds_devices:
        return
    message = f"preempted by {by.name} of {by.project.name}: {p.reason}"
    if victim.state != JobState.STOPPING.value:
        change_state(session, victim, JobState.STOPPING, now, message, reason=message)
    else:
        victim.reason = message
    victim.preempted_by_id = by.id
    # Its devices now belong to the job that preempted it (bound below, same transaction).
    release_devices(session, victim)
    result.changed_nodes |= notify_job_nodes(session, victim)
    result.preempted += 1


def apply_decisions(
    session: Session, decisions: Decisions, nodes: dict[str, Node], now: datetime
) -> CycleResult:
    result = CycleResult(shares=dict(decisions.projects), queue=list(decisions.queue))
    for preemption in decisions.preemptions:
        _preempt(session, preemption, now, result)
    for binding in decisions.bindings:
        job = session.get(Job, binding.job_id)
        if job is None or job.state != JobState.PENDING.value:
            continue
        workers = [(nodes.get(p.node), p) for p in binding.placements]
        if not workers or any(node is None for node, _ in workers):
            continue
        placed = [(node, p) for node, p in workers if node is not None]
        try:
            with session.begin_nested():
                what = _allocate(session, job, placed)
                session.flush()
        except (IntegrityError, _NoRoom):
            # A policy bug or a race: a device is taken. Leave the job pending.
            continue
        first, first_placement = placed[0]
        job.node_id = first.id
        job.gpu_ids = list(first_placement.gpu_ids)
        job.attempt += 1
        job.exit_code = None
        job.pid = None
        job.started_at = None
        job.finished_at = None
        job.failed_worker = None
        change_state(session, job, JobState.BOUND, now, f"bound to {what} (attempt {job.attempt})")
        for node in {node.id: node for node, _ in placed}.values():
            node.generation += 1
            result.changed_nodes.add(node.id)
        result.bound += 1
    _update_reasons(session, decisions.reasons)
    result.pending = len(decisions.reasons)
    return result


class _NoRoom(Exception):
    """A shared GPU has not the memory the binding needs (a policy bug or a race)."""


def _allocate(session: Session, job: Job, placed: list[tuple[Node, Placement]]) -> str:
    """Record the devices of a binding (the database refuses a device that is taken);
    return where it went, in words for the job's event."""
    job.mig_uuid = None
    job.master_port = None
    if job.workers > 1:
        return _allocate_gang(session, job, placed)
    node, placement = placed[0]
    if placement.mig_slice is not None:
        return _allocate_mig(session, job, node, placement)
    if 0 < job.gpus < 1 or job.gpu_memory_bytes is not None:
        return _allocate_share(session, job, node, placement)
    session.add_all(
        GpuAllocation(node_id=node.id, gpu_index=i, job_id=job.id) for i in placement.gpu_ids
    )
    gpus = ",".join(str(i) for i in placement.gpu_ids)
    return f"{node.name}, GPUs [{gpus}]" if gpus else f"{node.name}, no GPUs"


def _mark_shared(session: Session, node: Node, gpu: int) -> None:
    """Mark ``gpu`` shared (its row without a job); refuse it if a job holds it whole."""
    row = session.get(GpuAllocation, (node.id, gpu))
    if row is None:
        session.add(GpuAllocation(node_id=node.id, gpu_index=gpu, job_id=None))
    elif row.job_id is not None:
        raise _NoRoom


def _allocate_share(session: Session, job: Job, node: Node, placement: Placement) -> str:
    (gpu,) = placement.gpu_ids
    memory = next((g.memory_bytes for g in node.gpus if g.index == gpu), 0)
    need = job.gpu_memory_bytes if job.gpu_memory_bytes is not None else int(job.gpus * memory)
    used = session.scalar(
        select(func.coalesce(func.sum(GpuShare.memory_bytes), 0)).where(
            GpuShare.node_id == node.id, GpuShare.gpu_index == gpu
        )
    )
    if int(used or 0) + need > memory:
        raise _NoRoom
    _mark_shared(session, node, gpu)
    session.add(GpuShare(job_id=job.id, node_id=node.id, gpu_index=gpu, memory_bytes=need))
    share = f"{job.gpus:g} of it" if job.gpu_memory_bytes is None else "a share"
    return f"{node.name}, GPU {gpu} shared ({share}: {need / 1024**3:.1f} GiB)"


def _allocate_mig(session: Session, job: Job, node: Node, placement: Placement) -> str:
    instance = session.scalar(
        select(MigInstance).where(
            MigInstance.node_id == node.id, MigInstance.uuid == placement.mig_slice
        )
    )
    if instance is None:
        raise _NoRoom
    _mark_shared(session, node, instance.gpu_index)
    session.add(
        GpuShare(
            job_id=job.id,
            node_id=node.id,
            gpu_index=instance.gpu_index,
            memory_bytes=instance.memory_bytes,
            mig_uuid=instance.uuid,
        )
    )
    job.mig_uuid = instance.uuid
    return (
        f"{node.name}, MIG {instance.profile} instance {instance.uuid} of GPU {instance.gpu_index}"
    )


def _allocate_gang(session: Session, job: Job, placed: list[tuple[Node, Placement]]) -> str:
    session.execute(delete(JobWorker).where(JobWorker.job_id == job.id))
    for rank, (node, placement) in enumerate(placed):
        session.add_all(
            GpuAllocation(node_id=node.id, gpu_index=i, job_id=job.id) for i in placement.gpu_ids
        )
        session.add(
            JobWorker(
                job_id=job.id,
                rank=rank,
                node_id=node.id,
                gpu_ids=list(placement.gpu_ids),
                state="bound",
            )
        )
    job.master_port = _free_master_port(session, placed[0][0])
    on: dict[str, list[str]] = {}
    for node, placement in placed:
        on.setdefault(node.name, []).append("[" + ",".join(map(str, placement.gpu_ids)) + "]")
    spread = ", ".join(f"{name} {' '.join(gpus)}" for name, gpus in on.items())
    return f"{len(placed)} workers on {spread}, rendezvous port {job.master_port}"


def _free_master_port(session: Session, node: Node) -> int:
    """The lowest rendezvous port no live gang whose first worker is on ``node`` uses."""
    used = set(
        session.scalars(
            select(Job.master_port).where(
                Job.node_id == node.id,
                Job.state.in_(HOLDING_STATES),
                Job.master_port.is_not(None),
            )
        )
    )
    for port in range(MASTER_PORT_BASE, MASTER_PORT_BASE + MASTER_PORTS):
        if port not in used:
            return port
    raise _NoRoom


def _update_reasons(session: Session, reasons: dict[int, str]) -> None:
    """Store the policy's reason on each job still pending whose reason changed.

    One query for the current reasons and one batched UPDATE, not a lookup per pending
    job: this runs every cycle, over the whole queue.
    """
    if not reasons:
        return
    current = session.execute(select(Job.id, Job.reason).where(Job.state == JobState.PENDING.value))
    changed = [
        {"job_id": job_id, "new_reason": reasons[job_id]}
        for job_id, reason in current
        if job_id in reasons and reasons[job_id] != reason
    ]
    if changed:
        jobs = Job.metadata.tables[Job.__tablename__]
        session.execute(
            update(jobs)
            .where(jobs.c.id == bindparam("job_id"), jobs.c.state == JobState.PENDING.value)
            .values(reason=bindparam("new_reason")),
            changed,
        )


def decay_usage(
    session: Session, snapshot: Snapshot, now: datetime, half_life: float
) -> dict[str, float]:
    """Advance every project's time-decayed usage to ``now`` and return it (GPU-seconds).

    usage(now) = usage(then) * 2^(-dt / half_life) + allocated GPUs * dt, as Slurm's
    fair-share usage decays: what a project used one half-life ago counts half.
    """
    allocated: dict[str, float] = {}
    for job in snapshot.running:
        allocated[job.project] = allocated.get(job.project, 0.0) + job.gpus * job.workers
    usage: dict[str, float] = {}
    for project in session.scalars(select(Project)):
        then = project.usage_at or now
        dt = max(0.0, (now - then).total_seconds())
        decayed = project.usage_gpu_seconds * 0.5 ** (dt / half_life)
        project.usage_gpu_seconds = decayed + allocated.get(project.name, 0.0) * dt
        project.usage_at = now
        usage[project.name] = project.usage_gpu_seconds
    return usage


def run_cycle(
    session: Session, policy: Policy, now: datetime, usage_half_life: float | None = None
) -> CycleResult:
    snapshot, nodes = build_snapshot(session)
    if usage_half_life:
        usage = decay_usage(session, snapshot, now, usage_half_life)
        snapshot = replace(
            snapshot, usage=usage, config=SchedulerConfig(usage_half_life=usage_half_life)
        )
    return apply_decisions(session, policy.schedule(snapshot), nodes, now)
