"""Jobs: submit, list, get, delete, logs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from corral.core import schemas
from corral.core.errors import Forbidden, InvalidRequest
from corral.core.states import JobState
from corral.server.api.deps import CallerDep, CtxDep
from corral.server.api.responses import model_response
from corral.server.context import ServerContext
from corral.server.services import jobs as job_service
from corral.server.services.accounts import Caller, can_use_project
from corral.server.services.volumes import ContainerPolicy
from corral.store.models import Job, JobWorker

router = APIRouter(tags=["jobs"])

LOG_POLL_SECONDS = 0.2
_WORKER_ENDED = frozenset({"exited", "failed"})  # JobWorker.state of a worker that ended


@router.post("/jobs", response_model=schemas.JobOut, status_code=201)
def submit(ctx: CtxDep, caller: CallerDep, body: schemas.JobSubmit) -> Response:
    with ctx.db.tx(low_priority=True) as s:
        job = job_service.submit(
            s,
            caller,
            body,
            ctx.clock.now(),
            ctx.settings.default_grace,
            ContainerPolicy(
                allow_host_paths=ctx.settings.allow_host_path_volumes,
                allow_root=ctx.settings.allow_root_containers,
            ),
        )
        out = job_service.job_out(job)
    ctx.signals.wake_scheduler()
    return model_response(out, status_code=201)


@router.get("/jobs", response_model=schemas.JobList)
def list_jobs(
    ctx: CtxDep,
    caller: CallerDep,
    project: str | None = None,
    user: str | None = None,
    state: str | None = None,
    name: str | None = None,
    all: bool = Query(False, description="include deleted jobs"),
) -> schemas.JobList:
    with ctx.db.read() as s:
        rows = job_service.list_jobs(
            s, project=project, user=user, state=state, name=name, include_deleted=all
        )
        return schemas.JobList(jobs=[job_service.job_out(j) for j in rows])


@router.get("/jobs/{project}/{name}", response_model=schemas.JobDetail)
def get_job(ctx: CtxDep, caller: CallerDep, project: str, name: str) -> schemas.JobDetail:
    with ctx.db.read() as s:
        return job_service.job_detail(s, job_service.find_job(s, project, name))


@router.delete("/jobs/{project}/{name}", response_model=schemas.JobOut)
def delete_job(ctx: CtxDep, caller: CallerDep, project: str, name: str) -> schemas.JobOut:
    with ctx.db.tx() as s:
        job = job_service.find_job(s, project, name)
        changed = job_service.delete_job(s, caller, job, ctx.clock.now())
        out = job_service.job_out(job)
    ctx.signals.nodes_changed(changed)
    return out


def _log_target(
    ctx: ServerContext, caller: Caller, project: str, name: str, attempt: int | None, rank: int
) -> tuple[int, int]:
    with ctx.db.read() as s:
        job = job_service.find_job(s, project, name)
        if not can_use_project(s, caller, job.project):
            raise Forbidden(f"only members of project {project!r} may read its jobs' logs")
        chosen = attempt if attempt is not None else job.attempt
        if chosen < 0 or chosen > job.attempt:
            raise InvalidRequest(
                f"attempt: job {name!r} has attempts 1..{job.attempt}", field="attempt"
            )
        workers = job.workers or 1
        if rank >= workers:
            has = "only rank 0 (it is not a gang)" if workers == 1 else f"ranks 0..{workers - 1}"
            raise InvalidRequest(f"rank: job {name!r} has {has}", field="rank")
        return job.id, chosen


def _log_finished(ctx: ServerContext, job_id: int, attempt: int, rank: int) -> bool:
    """Whether worker ``rank`` of ``attempt`` will write no more output: the attempt is
    over (a newer one, or the job ended or waits again), or that worker has ended."""
    with ctx.db.read() as s:
        job = s.get(Job, job_id)
        if (
            job is None
            or job.attempt != attempt
            or JobState(job.state).is_terminal
            or JobState(job.state) is JobState.PENDING
        ):
            return True
        if (job.workers or 1) == 1:
            return False
        # A gang's worker can end before its job does; its agent ships all of its output
        # before reporting its end, so the output is complete by then.
        worker = s.get(JobWorker, (job_id, rank))
        return worker is not None and worker.state in _WORKER_ENDED


@router.get(
    "/jobs/{project}/{name}/logs",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def job_logs(
    ctx: CtxDep,
    caller: CallerDep,
    project: str,
    name: str,
    offset: int = Query(0, ge=0),
    follow: bool = False,
    attempt: int | None = Query(None, ge=0, description="default: the latest attempt"),
    rank: int = Query(0, ge=0, description="which worker of a gang (default 0)"),
) -> StreamingResponse:
    job_id, chosen = await asyncio.to_thread(_log_target, ctx, caller, project, name, attempt, rank)

    async def body() -> AsyncIterator[bytes]:
        pos = offset
        while True:
            data = await asyncio.to_thread(ctx.logs.read, job_id, chosen, pos, rank=rank)
            if data:
                pos += len(data)
                yield data
                continue
            if not follow:
                return
            # Read once more after seeing the job finished: its last chunk may have
            # landed between our read and the state check.
            if await asyncio.to_thread(_log_finished, ctx, job_id, chosen, rank):
                tail = await asyncio.to_thread(ctx.logs.read, job_id, chosen, pos, rank=rank)
                if tail:
                    yield tail
                return
            await asyncio.sleep(LOG_POLL_SECONDS)

    return StreamingResponse(body(), media_type="text/plain; charset=utf-8")


@router.get("/queue", response_model=schemas.QueueOut)
def queue(ctx: CtxDep, caller: CallerDep, project: str | None = None) -> schemas.QueueOut:
    """Pending jobs in the order the scheduler considers them, each with why it waits."""
    with ctx.db.read() as s:
        pending = job_service.list_jobs(s, project=project, state=JobState.PENDING.value)
        return job_service.queue_out(pending, ctx.scheduling.queue, ctx.clock.now())
