"""Nodes: registration, heartbeats and reports from agents, desired state, liveness."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session, lazyload

from corral.core import schemas
from corral.core.errors import Forbidden, NotFound
from corral.core.states import JobKind, JobState, NodeState
from corral.server.services.auth import NODE_PREFIX, hash_token, new_secret
from corral.server.services.jobs import (
    change_state,
    job_node_ids,
    notify_job_nodes,
    notify_nodes,
    record_event,
)
from corral.server.services.volumes import container_spec
from corral.store.models import (
    Gpu,
    GpuAllocation,
    Job,
    JobEvent,
    JobWorker,
    MigInstance,
    Node,
    NodeEvent,
    Project,
    User,
)

HOLDING_STATES = [s.value for s in JobState if s.holds_devices]


def node_event(session: Session, node: Node, type_: str, message: str, now: datetime) -> None:
    session.add(NodeEvent(node_id=node.id, at=now, type=type_, message=message))


def set_node_state(
    session: Session, node: Node, new: NodeState, now: datetime, message: str
) -> None:
    if node.state == new.value:
        return
    node.state = new.value
    node.state_changed_at = now
    node.reason = None if new is NodeState.READY else message
    node_event(session, node, new.value, message, now)


def register(
    session: Session, inv: schemas.NodeInventory, now: datetime, *, node_token_of: Node | None
) -> tuple[Node, str]:
    """Record a node's inventory; return it with a fresh node token.

    ``node_token_of`` is the node that authenticated with its own token (a re-register
    without a join token); such a node may only register under its own name.
    """
    node = session.scalar(select(Node).where(Node.name == inv.name))
    if node_token_of is not None and (node is None or node.id != node_token_of.id):
        raise Forbidden("a node token may only re-register its own node")
    token = new_secret(NODE_PREFIX)
    if node is None:
        node = Node(
            name=inv.name,
            state=NodeState.REGISTERING.value,
            registered_at=now,
            state_changed_at=now,
            generation=1,
            token_hash=hash_token(token),
        )
        session.add(node)
    node.token_hash = hash_token(token)
    node.hostname = inv.hostname
    node.address = inv.address
    node.cpu_cores = inv.cpu_cores
    node.memory_bytes = inv.memory_bytes
    node.driver_version = inv.driver_version
    node.cuda_version = inv.cuda_version
    node.simulated = inv.simulated
    node.gpu_backend = inv.gpu_backend
    node.agent_version = inv.agent_version
    node.runs_jobs_as = inv.runs_jobs_as
    node.container_engine = inv.container_engine
    node.pool = inv.pool
    node.last_heartbeat = now
    node.generation = (node.generation or 0) + 1
    # Update GPU rows in place (by index): allocations refer to indices, and deleting
    # then re-inserting the same (node, index) would trip the unique constraint.
    found = {g.index: g for g in inv.gpus}
    changed = []
    for row in list(node.gpus):
        new = found.get(row.index)
        if new is None:
            node.gpus.remove(row)
            changed.append(row.index)
            continue
        if row.uuid != new.uuid:
            changed.append(row.index)
        row.uuid, row.model = new.uuid, new.model
        row.memory_bytes, row.simulated = new.memory_bytes, new.simulated
    known = {row.index for row in node.gpus}
    node.gpus.extend(
        Gpu(
            index=g.index,
            uuid=g.uuid,
            model=g.model,
            memory_bytes=g.memory_bytes,
            simulated=g.simulated,
        )
        for g in inv.gpus
        if g.index not in known
    )
    session.flush()
    _record_mig(session, node, inv)
    if changed:
        node_event(session, node, "inventory", f"GPUs changed at indices {changed}", now)
    kind = "simulated " if inv.simulated else ""
    set_node_state(
        session, node, NodeState.READY, now, f"registered with {len(inv.gpus)} {kind}GPUs"
    )
    node_event(
        session,
        node,
        "registered",
        f"agent {inv.agent_version} registered ({len(inv.gpus)} {kind}GPUs, "
        f"backend {inv.gpu_backend})",
        now,
    )
    return node, token


def _record_mig(session: Session, node: Node, inv: schemas.NodeInventory) -> None:
    """Make the node's MIG instances what the agent found (the layout is discovered,
    never assumed). A job keeps running on an instance that vanished; the scheduler
    simply no longer offers it."""
    found = {m.uuid: (g.index, m) for g in inv.gpus for m in g.mig}
    rows = {
        r.uuid: r
        for r in session.scalars(select(MigInstance).where(MigInstance.node_id == node.id))
    }
    for uuid, old in rows.items():
        if uuid not in found:
            session.delete(old)
    for uuid, (gpu_index, m) in found.items():
        row = rows.get(uuid) or MigInstance(node_id=node.id, uuid=uuid)
        session.add(row)
        row.gpu_index, row.profile = gpu_index, m.profile
        row.gpu_instance_id, row.compute_instance_id = m.gpu_instance_id, m.compute_instance_id
        row.compute_slices, row.memory_bytes = m.compute_slices, m.memory_bytes
    session.flush()


_JOB_ALONE = (lazyload(Job.project), lazyload(Job.user), lazyload(Job.node))


def apply_reports(
    session: Session, node: Node, reports: list[schemas.JobReport], now: datetime
) -> tuple[bool, set[int]]:
    """Apply an agent's job reports. Returns whether a job ended (devices were freed),
    and the ids of other nodes whose desired state changed (a gang's other workers, to
    be stopped when one failed).

    Reports for another node or an older attempt are stale (the job was rebound since)
    and ignored; repeated reports are harmless because the state machine only moves
    forwards. A ``notice`` changes no state: it becomes a job event (`_notice`).
    """
    freed = False
    changed: set[int] = set()
    for report in reports:
        # Nothing here needs the job's project, user or node (joined by default).
        job = session.get(Job, report.job_id, options=_JOB_ALONE)
        if job is None or job.attempt != report.attempt:
            continue
        if report.state == "notice":
            _notice(session, job, report, node, now)
            continue
        if job.workers > 1:
            freed = _gang_report(session, job, report, node, now, changed) or freed
            continue
        if job.node_id != node.id or report.rank != 0:
            continue
        state = JobState(job.state)
        at = report.at or now
        if report.state == "starting" and state is JobState.BOUND:
            change_state(session, job, JobState.STARTING, at, f"starting on {node.name}")
        elif report.state == "running" and state in (JobState.BOUND, JobState.STARTING):
            job.pid = report.pid
            job.started_at = at
            change_state(
                session,
                job,
                JobState.RUNNING,
                at,
                f"running on {node.name}" + (f" (pid {report.pid})" if report.pid else ""),
            )
        elif report.state == "running" and state is JobState.STOPPING and job.started_at is None:
            job.pid, job.started_at = report.pid, at
        elif report.state in ("exited", "failed") and state.holds_devices:
            freed = True
            _finish(session, job, report, node, at)
    return freed, changed


_ENDED = ("exited", "failed")


def _notice(
    session: Session, job: Job, report: schemas.JobReport, node: Node, now: datetime
) -> None:
    """Record what an agent says the job's user should know (a ``notice`` report) as a
    job event of type ``notice``, if that node runs that worker and the job still holds
    its devices. An agent resends reports whose sync failed: the same message twice is
    recorded once."""
    if not report.message or not JobState(job.state).holds_devices:
        return
    if report.rank == 0 and job.workers == 1:
        runs_it = job.node_id == node.id
    else:
        worker = session.get(JobWorker, (job.id, report.rank))
        runs_it = worker is not None and worker.node_id == node.id
    if not runs_it:
        return
    known = session.scalar(
        select(JobEvent.id).where(
            JobEvent.job_id == job.id, JobEvent.type == "notice", JobEvent.message == report.message
        )
    )
    if known is None:
        record_event(session, job, "notice", report.message, report.at or now, node.name)


def _gang_report(
    session: Session,
    job: Job,
    report: schemas.JobReport,
    node: Node,
    now: datetime,
    changed: set[int],
) -> bool:
    """Apply one worker's report to its gang. Returns True when the job ended; adds to
    ``changed`` the nodes whose desired state changed (the other workers', to stop).

    The job runs once every worker runs; it succeeds once every worker exited with 0. A
    worker that fails (or exits non-zero) stops the others, and the job ends failed once
    they are all gone.
    """
    worker = session.get(JobWorker, (job.id, report.rank))
    state = JobState(job.state)
    if worker is None or worker.node_id != node.id or not state.holds_devices:
        return False
    at = report.at or now
    where = f"worker {report.rank} on {node.name}"
    if report.state == "starting" and worker.state == "bound":
        worker.state = "starting"
        if state is JobState.BOUND:
            change_state(session, job, JobState.STARTING, at, f"starting ({where} first)")
        return False
    if report.state == "running" and worker.state in ("bound", "starting"):
        worker.state, worker.pid = "running", report.pid
        if report.rank == 0:
            job.pid = report.pid
        workers = list(session.scalars(select(JobWorker).where(JobWorker.job_id == job.id)))
        if all(w.state == "running" for w in workers) and state in (
            JobState.BOUND,
            JobState.STARTING,
        ):
            job.started_at = at
            change_state(
                session, job, JobState.RUNNING, at, f"running: all {len(workers)} workers started"
            )
        return False
    if report.state not in _ENDED or worker.state in _ENDED:
        return False
    worker.state, worker.exit_code = report.state, report.exit_code
    session.flush()
    workers = list(session.scalars(select(JobWorker).where(JobWorker.job_id == job.id)))
    bad = report.state == "failed" or report.exit_code != 0
    if bad and state is not JobState.STOPPING and job.failed_worker is None:
        detail = f": {report.message}" if report.message else ""
        code = "unknown" if report.exit_code is None else str(report.exit_code)
        what = (
            f"could not start{detail}"
            if report.state == "failed"
            else f"exited with code {code}{detail}"
        )
        job.failed_worker = report.rank
        job.exit_code = report.exit_code
        if any(w.state not in _ENDED for w in workers):
            message = f"{where} {what}: stopping the other workers"
            change_state(session, job, JobState.STOPPING, at, message, reason=message)
            changed.update(notify_job_nodes(session, job))
            return False
        change_state(session, job, JobState.FAILED, at, f"{where} {what}", reason=f"{where} {what}")
        return True
    if any(w.state not in _ENDED for w in workers):
        return False
    _finish_gang(session, job, workers, at)
    return True


def _finish_gang(session: Session, job: Job, workers: list[JobWorker], at: datetime) -> None:
    """Every worker of the gang is gone: the job's end."""
    state = JobState(job.state)
    if state is JobState.STOPPING and job.preempted_by_id and not job.deleted:
        _preempted(session, job, at, "all workers stopped after preemption")
    elif job.failed_worker is not None:
        change_state(
            session,
            job,
            JobState.FAILED,
            at,
            "all workers gone after a worker failed",
            reason=job.reason,
        )
    elif state is JobState.STOPPING:
        change_state(session, job, JobState.STOPPED, at, "all workers stopped", reason=job.reason)
    else:
        job.exit_code = 0
        change_state(
            session, job, JobState.SUCCEEDED, at, f"all {len(workers)} workers exited with code 0"
        )


def _finish(
    session: Session, job: Job, report: schemas.JobReport, node: Node, at: datetime
) -> None:
    job.exit_code = report.exit_code
    detail = f": {report.message}" if report.message else ""
    if report.state == "failed":
        change_state(
            session,
            job,
            JobState.FAILED,
            at,
            f"could not start on {node.name}{detail}",
            reason=f"could not start{detail}",
        )
    elif JobState(job.state) is JobState.STOPPING and job.preempted_by_id and not job.deleted:
        code = "unknown" if report.exit_code is None else str(report.exit_code)
        _preempted(session, job, at, f"stopped on {node.name} after preemption (exit code {code})")
    elif JobState(job.state) is JobState.STOPPING:
        code = "unknown" if report.exit_code is None else str(report.exit_code)
        change_state(
            session,
            job,
            JobState.STOPPED,
            at,
            f"stopped on {node.name} (exit code {code}){detail}",
            reason=job.reason,
        )
    elif report.exit_code == 0:
        change_state(session, job, JobState.SUCCEEDED, at, f"exited with code 0 on {node.name}")
    elif report.exit_code is None:
        change_state(
            session,
            job,
            JobState.FAILED,
            at,
            f"ended on {node.name}{detail}",
            reason=f"exit code unknown{detail}",
        )
    else:
        change_state(
            session,
            job,
            JobState.FAILED,
            at,
            f"exited with code {report.exit_code} on {node.name}{detail}",
            # The agent's note says why when it knows (it stopped the job itself, the
            # kernel killed it for memory).
            reason=f"exited with code {report.exit_code}{detail}",
        )


def _preempted(session: Session, job: Job, at: datetime, message: str) -> None:
    """A preempted job is gone from its node(s): record it, and back to the queue."""
    reason = job.reason
    change_state(session, job, JobState.PREEMPTED, at, message, reason=reason)
    requeue(session, job, at, reason)


def requeue(session: Session, job: Job, at: datetime, reason: str | None) -> None:
    """Put a preempted job back in the queue; it keeps its place (submission order)."""
    job.preempted_note = reason
    job.preempted_by_id = None
    job.node_id = None
    job.gpu_ids = []
    job.pid = None
    job.mig_uuid = None
    job.master_port = None
    change_state(
        session,
        job,
        JobState.PENDING,
        at,
        "back in the queue: it restarts when GPUs are free for it",
        reason=f"{reason}; waiting to restart" if reason else None,
    )


_WOKEN_BY_HEARTBEAT = (NodeState.NOT_READY.value, NodeState.DOWN.value, NodeState.REGISTERING.value)


def heartbeat_due(node: Node, now: datetime, every: float) -> bool:
    """Whether a sync from ``node`` must write a heartbeat: its state depends on one, or
    the last one written is ``every`` seconds old."""
    if node.state in _WOKEN_BY_HEARTBEAT:
        return True
    return node.last_heartbeat is None or (now - node.last_heartbeat).total_seconds() >= every


def heartbeat(session: Session, node: Node, now: datetime) -> None:
    node.last_heartbeat = now
    if node.state in _WOKEN_BY_HEARTBEAT:
        set_node_state(session, node, NodeState.READY, now, "heartbeats resumed")


_ASSIGNMENT_COLUMNS = (
    Job.id,
    Job.attempt,
    Job.name,
    Project.name.label("project"),
    Project.gpu_memory_policy,
    User.name.label("user"),
    User.unix_user,
    Job.kind,
    Job.state,
    Job.command,
    Job.env,
    Job.workdir,
    Job.gpus,
    Job.gpu_memory_bytes,
    Job.mig_uuid,
    Job.cpus,
    Job.memory_bytes,
    Job.grace_seconds,
    Job.preempted_by_id,
    Job.workers,
    Job.node_id,
    Job.master_port,
    Job.image,
    Job.shm_size_bytes,
    Job.volumes,
    Job.run_as_root,
)


# Built once: constructing these selects costs more than running them, and every sync of
# every agent runs both.
_ONE_WORKER_JOBS = (
    select(*_ASSIGNMENT_COLUMNS, Job.gpu_ids)
    .join(Project, Project.id == Job.project_id)
    .join(User, User.id == Job.user_id)
    .where(Job.node_id == bindparam("node_id"), Job.state.in_(HOLDING_STATES), Job.workers == 1)
    .order_by(Job.id)
)
_GANG_WORKERS = (
    select(*_ASSIGNMENT_COLUMNS, JobWorker.rank, JobWorker.gpu_ids.label("worker_gpus"))
    .join(Job, Job.id == JobWorker.job_id)
    .join(Project, Project.id == Job.project_id)
    .join(User, User.id == Job.user_id)
    .where(JobWorker.node_id == bindparam("node_id"), Job.state.in_(HOLDING_STATES))
    .order_by(Job.id, JobWorker.rank)
)


def desired_state(session: Session, node: Node, now: datetime) -> schemas.SyncResponse:
    # Every agent's every sync: plain rows of what an assignment needs, not ORM objects.
    # One-worker jobs on this node, then the workers of gangs that have some here.
    here = {"node_id": node.id}
    units: list[tuple[Any, int, list[int]]] = [
        (j, 0, list(j.gpu_ids)) for j in session.execute(_ONE_WORKER_JOBS, here)
    ]
    gang_rows = session.execute(_GANG_WORKERS, here).all()
    units.extend((g, g.rank, list(g.worker_gpus)) for g in gang_rows)
    masters: dict[int, str] = {}
    if gang_rows:
        master_ids = {g.node_id for g in gang_rows}
        for node_id, hostname, address in session.execute(
            select(Node.id, Node.hostname, Node.address).where(Node.id.in_(master_ids))
        ):
            masters[node_id] = address or hostname
    # A job bound to devices that jobs it preempted still hold starts after they are gone.
    after: dict[int, set[int]] = {}
    for j, _, _ in units:
        if j.preempted_by_id is not None:
            after.setdefault(j.preempted_by_id, set()).add(j.id)
    gpus = {g.index: g for g in node.gpus}
    assignments = []
    for j, rank, gpu_ids in units:
        shared = 0 < j.gpus < 1 or j.gpu_memory_bytes is not None
        share_bytes = None
        if shared and gpu_ids and gpu_ids[0] in gpus:
            memory = gpus[gpu_ids[0]].memory_bytes
            share_bytes = j.gpu_memory_bytes or int(j.gpus * memory)
        assignments.append(
            schemas.Assignment(
                job_id=j.id,
                attempt=j.attempt,
                name=j.name,
                project=j.project,
                user=j.user,
                unix_user=j.unix_user,
                kind=JobKind(j.kind),
                state=JobState(j.state),
                command=list(j.command),
                env=dict(j.env),
                workdir=j.workdir,
                gpu_ids=gpu_ids,
                gpu_uuids=[j.mig_uuid] if j.mig_uuid else [gpus[i].uuid for i in gpu_ids],
                cpus=j.cpus,
                memory_bytes=j.memory_bytes,
                grace_seconds=j.grace_seconds,
                stop=j.state == JobState.STOPPING.value,
                rank=rank,
                world_size=j.workers,
                master_addr=masters.get(j.node_id) if j.workers > 1 else None,
                master_port=j.master_port if j.workers > 1 else None,
                gpu_fraction=j.gpus if 0 < j.gpus < 1 else None,
                gpu_memory_bytes=share_bytes,
                gpu_memory_policy=j.gpu_memory_policy,
                after=sorted(after.get(j.id, ())),
                container=container_spec(j),
            )
        )
    return schemas.SyncResponse(
        generation=node.generation, assignments=assignments, server_time=now
    )


def check_liveness(
    session: Session,
    now: datetime,
    *,
    not_ready_after: float,
    down_after: float,
    server_started_at: datetime,
) -> tuple[bool, set[int]]:
    """Mark late nodes not_ready and silent ones down (their jobs become lost).

    Silence is measured from the later of the last heartbeat and the server's start, so
    a server restart does not declare every node down for the time it was itself away.
    Returns (whether devices were freed, ids of nodes whose desired state changed).
    """
    freed = False
    changed: set[int] = set()
    for node in session.scalars(select(Node).where(Node.state != NodeState.DOWN.value)):
        seen = max(node.last_heartbeat or node.registered_at, server_started_at)
        silent = (now - seen).total_seconds()
        last = node.last_heartbeat.isoformat(timespec="seconds") if node.last_heartbeat else "never"
        if silent >= down_after:
            set_node_state(
                session, node, NodeState.DOWN, now, f"no heartbeat for {silent:.0f}s (last {last})"
            )
            gangs_here = select(JobWorker.job_id).where(JobWorker.node_id == node.id)
            for job in session.scalars(
                select(Job).where(
                    or_(Job.node_id == node.id, Job.id.in_(gangs_here)),
                    Job.state.in_(HOLDING_STATES),
                )
            ):
                reason = f"node {node.name} stopped reporting (last heartbeat {last})"
                # A gang's workers on other nodes must stop too: tell their nodes.
                others = job_node_ids(session, job) - {node.id}
                change_state(session, job, JobState.LOST, now, reason, reason=reason)
                changed |= notify_nodes(session, others)
                freed = True
            node.generation += 1
            changed.add(node.id)
        elif silent >= not_ready_after and node.state == NodeState.READY.value:
            set_node_state(
                session,
                node,
                NodeState.NOT_READY,
                now,
                f"heartbeats late: none for {silent:.0f}s (last {last})",
            )
    return freed, changed


def node_out(session: Session, node: Node) -> schemas.NodeOut:
    allocated = session.scalars(
        select(GpuAllocation.gpu_index).where(GpuAllocation.node_id == node.id)
    )
    jobs = session.scalars(
        select(Job.name)
        .where(Job.node_id == node.id, Job.state.in_(HOLDING_STATES))
        .order_by(Job.id)
    )
    return schemas.NodeOut(
        name=node.name,
        state=NodeState(node.state),
        pool=node.pool,
        hostname=node.hostname,
        address=node.address,
        cpu_cores=node.cpu_cores,
        memory_bytes=node.memory_bytes,
        gpus=len(node.gpus),
        gpus_allocated=len(list(allocated)),
        gpu_devices=[
            schemas.GpuInfo(
                index=g.index,
                uuid=g.uuid,
                model=g.model,
                memory_bytes=g.memory_bytes,
                simulated=g.simulated,
            )
            for g in node.gpus
        ],
        driver_version=node.driver_version,
        cuda_version=node.cuda_version,
        simulated=node.simulated,
        gpu_backend=node.gpu_backend,
        agent_version=node.agent_version,
        container_engine=node.container_engine,
        last_heartbeat=node.last_heartbeat,
        registered_at=node.registered_at,
        jobs=list(jobs),
        reason=node.reason,
    )


def list_nodes(session: Session) -> list[schemas.NodeOut]:
    return [node_out(session, n) for n in session.scalars(select(Node).order_by(Node.name))]


def get_node(session: Session, name: str) -> Node:
    node = session.scalar(select(Node).where(Node.name == name))
    if node is None:
        raise NotFound(f"node {name!r} not found")
    return node
