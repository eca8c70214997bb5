"""Jobs: submit, look up, delete, and every state change (always with its event)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, func, select
from sqlalchemy.orm import Session

from corral.core import schemas
from corral.core.errors import AlreadyExists, Conflict, Forbidden, InvalidRequest, NotFound
from corral.core.states import JobKind, JobState
from corral.server.services.accounts import Caller, can_use_project, get_project
from corral.server.services.projects import known_pools
from corral.server.services.volumes import (
    NO_EXTRAS,
    ContainerPolicy,
    container_spec,
    resolve_mounts,
)
from corral.store.models import (
    Gpu,
    GpuAllocation,
    GpuShare,
    Job,
    JobEvent,
    JobWorker,
    MigInstance,
    Node,
    Project,
    User,
)


def record_event(
    session: Session, job: Job, type_: str, message: str, now: datetime, actor: str | None = None
) -> None:
    session.add(JobEvent(job_id=job.id, at=now, type=type_, message=message, actor=actor))


def change_state(
    session: Session,
    job: Job,
    new: JobState,
    now: datetime,
    message: str,
    *,
    actor: str | None = None,
    reason: str | None = None,
) -> None:
    """Move ``job`` to ``new`` (checked against the state machine) and record the event.

    Leaving a device-holding state releases the job's GPUs in the same transaction.
    """
    old = JobState(job.state)
    if not old.can_become(new):
        raise Conflict(f"job {job.name!r} cannot go from {old} to {new}")
    job.state = new.value
    job.reason = reason
    if old.holds_devices and not new.holds_devices:
        release_devices(session, job)
    if new.is_terminal:
        job.finished_at = now
    record_event(session, job, new.value, message, now, actor)


def is_shared(job: Job) -> bool:
    """Whether the job holds part of a GPU (a fraction, an amount of memory, a MIG instance)."""
    return 0 < job.gpus < 1 or job.gpu_memory_bytes is not None or job.mig_profile is not None


def release_devices(session: Session, job: Job) -> None:
    """Give back every device ``job`` holds: whole GPUs, its share of a GPU (and the
    GPU's shared marker once no share is left on it)."""
    session.execute(delete(GpuAllocation).where(GpuAllocation.job_id == job.id))
    if not is_shared(job):
        return
    share = session.get(GpuShare, job.id)
    if share is None:
        return
    node_id, gpu_index = share.node_id, share.gpu_index
    session.delete(share)
    session.flush()
    session.execute(
        delete(GpuAllocation).where(
            GpuAllocation.node_id == node_id,
            GpuAllocation.gpu_index == gpu_index,
            GpuAllocation.job_id.is_(None),
            ~exists().where(and_(GpuShare.node_id == node_id, GpuShare.gpu_index == gpu_index)),
        )
    )


def _check_pool(session: Session, req: schemas.JobSubmit, project: Project) -> None:
    if req.pool is None:
        return
    pools = known_pools(session)
    if req.pool not in pools:
        raise InvalidRequest(
            f"pool: unknown pool {req.pool!r} (pools: {', '.join(sorted(pools))})", field="pool"
        )
    if project.pools is not None and req.pool not in project.pools:
        raise InvalidRequest(
            f"pool: project {project.name!r} may only use pools {', '.join(project.pools)}",
            field="pool",
        )


def _check_fits_somewhere(session: Session, req: schemas.JobSubmit) -> None:
    """Refuse requests that no node of the cluster could ever satisfy."""
    # Every submission: one small query (name, cores, memory, GPU count per node).
    nodes = session.execute(
        select(Node.name, Node.cpu_cores, Node.memory_bytes, func.count(Gpu.id).label("gpus"))
        .outerjoin(Gpu, Gpu.node_id == Node.id)
        .group_by(Node.id)
        .order_by(Node.id)
    ).all()
    if not nodes:
        return  # nodes may join later; the job waits with a reason
    if req.gpus >= 1:
        most = max(nodes, key=lambda n: int(n.gpus))
        if req.gpus > most.gpus:
            one = "a gang's worker" if req.workers > 1 else "a job"
            raise InvalidRequest(
                f"gpus: the job asks for {req.gpus:g} GPUs but the largest node has "
                f"{most.gpus} ({most.name}); {one} runs on one node",
                field="gpus",
            )
        total = sum(int(n.gpus) for n in nodes)
        if req.gpus * req.workers > total:
            raise InvalidRequest(
                f"workers: {req.workers} workers x {req.gpus:g} GPUs = "
                f"{req.gpus * req.workers:g} GPUs, but the cluster has {total}",
                field="workers",
            )
    if req.gpu_memory_bytes is not None:
        largest = session.scalar(select(func.max(Gpu.memory_bytes))) or 0
        if req.gpu_memory_bytes > largest:
            raise InvalidRequest(
                f"gpu_memory_bytes: the job asks for {req.gpu_memory_bytes / 1024**3:.1f} GiB "
                f"of one GPU, but the largest GPU has {largest / 1024**3:.1f} GiB",
                field="gpu_memory_bytes",
            )
    if req.mig_profile is not None:
        profiles = set(session.scalars(select(MigInstance.profile).distinct()))
        if req.mig_profile not in profiles:
            have = ", ".join(sorted(profiles)) or "none: no GPU is in MIG mode"
            raise InvalidRequest(
                f"mig_profile: no node has a MIG instance of profile {req.mig_profile} "
                f"(profiles: {have})",
                field="mig_profile",
            )
    if req.cpus is not None:
        most = max(nodes, key=lambda n: n.cpu_cores)
        if req.cpus > most.cpu_cores:
            raise InvalidRequest(
                f"cpus: the job asks for {req.cpus:g} CPU cores but the largest node has "
                f"{most.cpu_cores} ({most.name})",
                field="cpus",
            )
    if req.memory_bytes is not None:
        most = max(nodes, key=lambda n: n.memory_bytes)
        if req.memory_bytes > most.memory_bytes:
            raise InvalidRequest(
                f"memory: the job asks for more memory than any node has "
                f"(largest: {most.memory_bytes // 1024**3} GiB on {most.name})",
                field="memory_bytes",
            )


def submit(
    session: Session,
    caller: Caller,
    req: schemas.JobSubmit,
    now: datetime,
    default_grace: float,
    containers: ContainerPolicy = NO_EXTRAS,
) -> Job:
    project = get_project(session, req.project)
    if not can_use_project(session, caller, project):
        raise Forbidden(
            f"you are not a member of project {project.name!r} (an admin can add you with "
            f"`corral project add-member {project.name} {caller.name}`)",
            field="project",
        )
    live = session.scalar(
        select(Job.id).where(
            Job.project_id == project.id, Job.name == req.name, Job.deleted.is_(False)
        )
    )
    if live is not None:
        raise AlreadyExists(
            f"job {req.name!r} already exists in project {project.name!r}: delete it first "
            "or choose another name",
            field="name",
        )
    _check_pool(session, req, project)
    _check_fits_somewhere(session, req)
    mounts: list[dict[str, Any]] | None = None
    if req.image is not None:
        unix_user = session.scalar(select(User.unix_user).where(User.id == caller.id)) or ""
        mounts = resolve_mounts(session, req, caller.name, unix_user, containers)
    job = Job(
        name=req.name,
        project=project,  # loaded already: `job_out` needs no query for it
        user_id=caller.id,
        kind=req.kind.value,
        state=JobState.PENDING.value,
        reason="waiting for the scheduler",
        gpus=req.gpus,
        gpu_memory_bytes=req.gpu_memory_bytes,
        mig_profile=req.mig_profile,
        workers=req.workers,
        cpus=req.cpus,
        memory_bytes=req.memory_bytes,
        command=list(req.command),
        env=dict(req.env),
        workdir=req.workdir,
        grace_seconds=req.grace_seconds if req.grace_seconds is not None else default_grace,
        attempt=0,
        priority=req.priority,
        pool=req.pool,
        gpu_ids=[],
        created_at=now,
        deleted=False,
        image=req.image,
        shm_size_bytes=req.shm_size_bytes,
        volumes=mounts,
        run_as_root=req.run_as_root,
        ports=list(req.ports) or None,
    )
    session.add(job)
    session.flush()
    record_event(session, job, "submitted", f"submitted by {caller.name}", now, caller.name)
    return job


def find_job(session: Session, project_name: str, name: str) -> Job:
    """The live job ``name`` of a project, or else the newest deleted one of that name."""
    project = get_project(session, project_name)
    job = session.scalar(
        select(Job)
        .where(Job.project_id == project.id, Job.name == name)
        .order_by(Job.deleted, Job.id.desc())
        .limit(1)
    )
    if job is None:
        raise NotFound(f"job {name!r} not found in project {project_name!r}")
    return job


def list_jobs(
    session: Session,
    *,
    project: str | None = None,
    user: str | None = None,
    state: str | None = None,
    name: str | None = None,
    include_deleted: bool = False,
    limit: int = 5000,
) -> list[Job]:
    query = select(Job).join(Job.project).join(Job.user)
    if project:
        query = query.where(Project.name == project)
    if user:
        query = query.where(User.name == user)
    if state:
        try:
            query = query.where(Job.state == JobState(state).value)
        except ValueError:
            raise InvalidRequest(
                f"state: {state!r} is not a job state ({', '.join(s.value for s in JobState)})",
                field="state",
            ) from None
    if name:
        query = query.where(Job.name == name)
    if not include_deleted:
        query = query.where(Job.deleted.is_(False))
    return list(session.scalars(query.order_by(Job.id).limit(limit)))


def delete_job(session: Session, caller: Caller, job: Job, now: datetime) -> set[int]:
    """Delete ``job``: stop it if it is active. Returns the ids of nodes to notify."""
    if not (caller.is_admin or caller.id == job.user_id):
        raise Forbidden(f"only {job.user.name} or an admin may delete job {job.name!r}")
    if job.deleted:
        raise NotFound(f"job {job.name!r} is already deleted")
    job.deleted = True
    state = JobState(job.state)
    message = f"deleted by {caller.name}"
    if state is JobState.PENDING:
        change_state(
            session, job, JobState.STOPPED, now, message, actor=caller.name, reason=message
        )
        return set()
    if state.holds_devices and state is not JobState.STOPPING:
        change_state(
            session,
            job,
            JobState.STOPPING,
            now,
            f"{message}: stopping (SIGTERM, then SIGKILL after {job.grace_seconds:g}s)",
            actor=caller.name,
            reason=message,
        )
        return notify_job_nodes(session, job)
    record_event(session, job, "deleted", message, now, caller.name)
    return set()


def job_node_ids(session: Session, job: Job) -> set[int]:
    """The nodes the job's current attempt runs on (a gang's workers may span several)."""
    ids = {job.node_id} if job.node_id is not None else set()
    if job.workers > 1:
        ids.update(
            n
            for n in session.scalars(select(JobWorker.node_id).where(JobWorker.job_id == job.id))
            if n is not None
        )
    return ids


def notify_nodes(session: Session, node_ids: set[int]) -> set[int]:
    """Bump the generation of each node (its desired state changed: its agent's long
    poll must answer); returns the ids of those that exist, for `Signals.nodes_changed`."""
    bumped = set()
    for node_id in node_ids:
        node = session.get(Node, node_id)
        if node is not None:
            node.generation += 1
            bumped.add(node_id)
    return bumped


def notify_job_nodes(session: Session, job: Job) -> set[int]:
    """Tell every node of the job (each gang worker's) that its desired state changed."""
    return notify_nodes(session, job_node_ids(session, job))


def shown_reason(job: Job) -> str | None:
    """The reason people see: a preempted job waiting to restart also says who took its GPUs."""
    if job.state == JobState.PENDING.value and job.preempted_note:
        if job.reason and not job.reason.startswith(job.preempted_note):
            return f"{job.preempted_note}; now: {job.reason}"
        return job.reason or job.preempted_note
    return job.reason


def job_out(job: Job) -> schemas.JobOut:
    node = job.node
    uuids: list[str] = []
    if job.mig_uuid is not None:
        uuids = [job.mig_uuid]
    elif node is not None and job.gpu_ids:
        by_index = {g.index: g.uuid for g in node.gpus}
        uuids = [by_index.get(i, "") for i in job.gpu_ids]
    workers = []
    if job.workers > 1 and job.attempt > 0:
        workers = [
            schemas.WorkerOut(
                rank=w.rank,
                node=w.node.name if w.node else None,
                gpu_ids=list(w.gpu_ids),
                state=w.state,
                pid=w.pid,
                exit_code=w.exit_code,
            )
            for w in job.worker_rows
        ]
    return schemas.JobOut(
        id=job.id,
        name=job.name,
        project=job.project.name,
        user=job.user.name,
        kind=JobKind(job.kind),
        state=JobState(job.state),
        node=node.name if node else None,
        gpus=job.gpus,
        gpu_memory_bytes=job.gpu_memory_bytes,
        mig_profile=job.mig_profile,
        workers=job.workers,
        gpu_ids=list(job.gpu_ids or []),
        gpu_uuids=uuids,
        worker_list=workers,
        cpus=job.cpus,
        memory_bytes=job.memory_bytes,
        command=list(job.command),
        env=dict(job.env),
        workdir=job.workdir,
        grace_seconds=job.grace_seconds,
        attempt=job.attempt,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        exit_code=job.exit_code,
        reason=shown_reason(job),
        deleted=job.deleted,
        priority=job.priority,
        pool=job.pool,
        container=container_spec(job),
        ports=list(job.ports or []),
    )


def job_detail(session: Session, job: Job) -> schemas.JobDetail:
    events = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)
    )
    return schemas.JobDetail(
        **job_out(job).model_dump(),
        events=[
            schemas.JobEventOut(at=e.at, type=e.type, message=e.message, actor=e.actor)
            for e in events
        ],
    )


def queue_out(pending: list[Job], order: list[int], now: datetime) -> schemas.QueueOut:
    """Pending jobs in the last cycle's scheduling order; jobs the scheduler has not seen
    yet (submitted since) follow in submission order."""
    rank = {job_id: i for i, job_id in enumerate(order)}
    ordered = sorted(pending, key=lambda j: (rank.get(j.id, len(rank)), j.id))
    return schemas.QueueOut(
        jobs=[
            schemas.QueueEntry(
                position=i + 1,
                name=j.name,
                project=j.project.name,
                user=j.user.name,
                kind=JobKind(j.kind),
                priority=j.priority,
                gpus=j.gpus,
                gpu_memory_bytes=j.gpu_memory_bytes,
                mig_profile=j.mig_profile,
                workers=j.workers,
                waiting_seconds=max(0.0, (now - j.created_at).total_seconds()),
                reason=shown_reason(j),
            )
            for i, j in enumerate(ordered)
        ]
    )
