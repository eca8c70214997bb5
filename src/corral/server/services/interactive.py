"""Who may open an interactive session in a job, and where it runs.

Terminals, port streams and port URLs give what amounts to a shell in the job, as its
Unix account: only the job's owner and admins may open them (project membership, which
is enough to read a job's logs, is not).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from corral.core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from corral.core.states import JobState, NodeState
from corral.server.services.accounts import Caller
from corral.server.services.jobs import record_event
from corral.store.models import Job, JobWorker


@dataclass(frozen=True)
class SessionTarget:
    """The worker a session runs in: job, attempt, rank, and the node that runs it."""

    job_id: int
    job_name: str
    attempt: int
    rank: int
    node_id: int
    node_name: str
    ports: tuple[int, ...]
    owner_id: int | None = None  # the job's user


def check_access(caller: Caller, job: Job, what: str) -> None:
    """Refuse (`Forbidden`) anyone but the job's owner and admins."""
    if caller.is_admin or caller.id == job.user_id:
        return
    raise Forbidden(
        f"only the owner of job {job.name} ({job.user.name}) and admins may {what} in it; "
        f"you are {caller.name}"
    )


def session_target(
    session: Session, caller: Caller, job: Job, *, rank: int, what: str
) -> SessionTarget:
    """Where a session in worker ``rank`` of ``job`` runs, once access is checked.

    Raises `Forbidden` (not the owner or an admin), `InvalidRequest` (no such rank) or
    `Conflict` (the job does not run now, or its node is not connected)."""
    check_access(caller, job, what)
    state = JobState(job.state)
    if job.deleted or state is not JobState.RUNNING:
        raise Conflict(
            f"job {job.name} is {state.value}{' (deleted)' if job.deleted else ''}: "
            f"one can {what} only in a running job"
        )
    workers = job.workers or 1
    if not 0 <= rank < workers:
        has = "only rank 0 (it is not a gang)" if workers == 1 else f"ranks 0..{workers - 1}"
        raise InvalidRequest(f"rank: job {job.name} has {has}", field="rank")
    node = job.node
    if rank > 0:
        worker = session.get(JobWorker, (job.id, rank))
        node = worker.node if worker is not None else None
    if node is None:
        raise Conflict(f"worker {rank} of job {job.name} has no node")
    if NodeState(node.state) not in (NodeState.READY, NodeState.CORDONED):
        raise Conflict(
            f"node {node.name}, where job {job.name} runs, is {node.state}: its agent is not "
            "connected to the server"
        )
    return SessionTarget(
        job_id=job.id,
        job_name=job.name,
        attempt=job.attempt,
        rank=rank,
        node_id=node.id,
        node_name=node.name,
        ports=tuple(job.ports or ()),
        owner_id=job.user_id,
    )


def find_job_by_id(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def note_session(
    session: Session, job_id: int, caller: Caller, message: str, now: datetime
) -> None:
    """Record in the job's events that ``caller`` opened a session (an audit trail)."""
    job = session.get(Job, job_id)
    if job is not None:
        record_event(session, job, "session", message, now, actor=caller.name)
