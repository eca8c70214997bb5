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

from sqlalchemy import Row, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.core.states import JobKind, JobState, NodeState
from corral.scheduler import (
    Decisions,
    DeviceView,
    JobView,
    NodeView,
    Placement,
    Policy,
    Preemption,
    ProjectShare,
    ProjectView,
    SchedulerConfig,
    Snapshot,
)
from corral.server.services.jobs import change_state
from corral.server.services.nodes import HOLDING_STATES
from corral.store.models import GpuAllocation, Job, Node, Project


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
    Job.pool,
    Job.cpus,
    Job.memory_bytes,
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


def _job_view(job: Row[Any], project: str, node: str | None) -> JobView:
    return JobView(
        id=job.id,
        name=job.name,
        project=project,
        order=job.id,
        kind="interactive" if job.kind == JobKind.INTERACTIVE.value else "train",
        priority=job.priority,
        gpus=job.gpus,
        pool=job.pool,
        cpus=job.cpus,
        memory_bytes=job.memory_bytes,
        placements=(Placement(node, tuple(job.gpu_ids)),) if node else (),
    )


def build_snapshot(session: Session) -> tuple[Snapshot, dict[str, Node]]:
    nodes = {n.name: n for n in session.scalars(select(Node).order_by(Node.name))}
    node_by_id = {n.id: n for n in nodes.values()}
    projects = list(session.scalars(select(Project).order_by(Project.id)))
    project_names = {p.id: p.name for p in projects}
    node_views = tuple(
        NodeView(
            name=n.name,
            schedulable=NodeState(n.state).schedulable,
            devices=tuple(
                DeviceView(index=g.index, uuid=g.uuid, memory_bytes=g.memory_bytes) for g in n.gpus
            ),
            cpu_cores=n.cpu_cores,
            memory_bytes=n.memory_bytes,
            pool=n.pool,
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
    holding = session.execute(
        select(*_QUEUE_COLUMNS, Job.gpu_ids, Job.node_id).where(
            Job.state.in_(HOLDING_STATES), Job.preempted_by_id.is_(None)
        )
    )
    running = tuple(
        _job_view(
            j,
            project_names[j.project_id],
            node_by_id[j.node_id].name if j.node_id in node_by_id else None,
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
    session.execute(delete(GpuAllocation).where(GpuAllocation.job_id == victim.id))
    if victim.node_id is not None:
        node = session.get(Node, victim.node_id)
        assert node is not None
        node.generation += 1
        result.changed_nodes.add(node.id)
    result.preempted += 1


def apply_decisions(
    session: Session, decisions: Decisions, nodes: dict[str, Node], now: datetime
) -> CycleResult:
    result = CycleResult(shares=dict(decisions.projects), queue=list(decisions.queue))
    for preemption in decisions.preemptions:
        _preempt(session, preemption, now, result)
    for binding in decisions.bindings:
        job = session.get(Job, binding.job_id)
        node = nodes.get(binding.node)
        if job is None or node is None or job.state != JobState.PENDING.value:
            continue
        try:
            with session.begin_nested():
                session.add_all(
                    GpuAllocation(node_id=node.id, gpu_index=i, job_id=job.id)
                    for i in binding.gpu_ids
                )
                session.flush()
        except IntegrityError:
            # A policy bug or a race: the device is taken. Leave the job pending.
            continue
        job.node_id = node.id
        job.gpu_ids = list(binding.gpu_ids)
        job.attempt += 1
        job.exit_code = None
        job.pid = None
        job.started_at = None
        job.finished_at = None
        gpus = ",".join(str(i) for i in binding.gpu_ids)
        what = f"GPUs [{gpus}]" if gpus else "no GPUs"
        change_state(
            session,
            job,
            JobState.BOUND,
            now,
            f"bound to {node.name}, {what} (attempt {job.attempt})",
        )
        node.generation += 1
        result.changed_nodes.add(node.id)
        result.bound += 1
    _update_reasons(session, decisions.reasons)
    result.pending = len(decisions.reasons)
    return result


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
