"""One scheduling cycle against the store: snapshot → policy → apply decisions.

The policy is pure (`corral.scheduler`); this module is the only place that turns rows
into a `Snapshot` and `Decisions` back into rows. Bindings are applied with the
database's guarantee that a GPU has one holder (`GpuAllocation`'s primary key), so a
bug in a policy can not double-book a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.core.states import JobState, NodeState
from corral.scheduler import (
    Decisions,
    DeviceView,
    JobView,
    NodeView,
    Placement,
    Policy,
    Snapshot,
)
from corral.server.services.jobs import change_state
from corral.server.services.nodes import HOLDING_STATES
from corral.store.models import GpuAllocation, Job, Node


@dataclass
class CycleResult:
    bound: int = 0
    pending: int = 0
    changed_nodes: set[int] = field(default_factory=set)


def _job_view(job: Job, node: str | None) -> JobView:
    return JobView(
        id=job.id,
        name=job.name,
        project=job.project.name,
        order=job.id,
        gpus=job.gpus,
        cpus=job.cpus,
        memory_bytes=job.memory_bytes,
        placements=(Placement(node, tuple(job.gpu_ids)),) if node else (),
    )


def build_snapshot(session: Session) -> tuple[Snapshot, dict[str, Node]]:
    nodes = {n.name: n for n in session.scalars(select(Node).order_by(Node.name))}
    node_by_id = {n.id: n for n in nodes.values()}
    views = tuple(
        NodeView(
            name=n.name,
            schedulable=NodeState(n.state).schedulable,
            devices=tuple(
                DeviceView(index=g.index, uuid=g.uuid, memory_bytes=g.memory_bytes) for g in n.gpus
            ),
            cpu_cores=n.cpu_cores,
            memory_bytes=n.memory_bytes,
        )
        for n in nodes.values()
    )
    running = tuple(
        _job_view(j, node_by_id[j.node_id].name if j.node_id in node_by_id else None)
        for j in session.scalars(select(Job).where(Job.state.in_(HOLDING_STATES)))
    )
    pending = tuple(
        _job_view(j, None)
        for j in session.scalars(
            select(Job).where(Job.state == JobState.PENDING.value).order_by(Job.id)
        )
    )
    return Snapshot(nodes=views, running=running, pending=pending), nodes


def apply_decisions(
    session: Session, decisions: Decisions, nodes: dict[str, Node], now: datetime
) -> CycleResult:
    result = CycleResult()
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
    for job_id, reason in decisions.reasons.items():
        job = session.get(Job, job_id)
        if job is not None and job.state == JobState.PENDING.value and job.reason != reason:
            job.reason = reason
    result.pending = len(decisions.reasons)
    return result


def run_cycle(session: Session, policy: Policy, now: datetime) -> CycleResult:
    snapshot, nodes = build_snapshot(session)
    if not snapshot.pending:
        return CycleResult()
    return apply_decisions(session, policy.schedule(snapshot), nodes, now)
