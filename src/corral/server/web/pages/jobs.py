"""The jobs pages: the jobs table (filters, pages, live refresh) and one job's page
(its fields, gang workers, events, charts and a live tail of its logs)."""

from __future__ import annotations

import codecs
import math
import shlex
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import escape
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, contains_eager

from corral.core import schemas
from corral.core.errors import Forbidden, InvalidRequest, NotFound
from corral.core.jobview import container_fields, gpus_text, run_time_text
from corral.core.quantities import format_bytes, format_duration
from corral.core.states import JobState
from corral.core.telemetry import ClusterNow
from corral.server.api.deps import CtxDep
from corral.server.api.jobs import _log_finished, _log_target
from corral.server.context import ServerContext
from corral.server.services import jobs as job_service
from corral.server.services import monitoring
from corral.server.services.accounts import Caller, can_use_project
from corral.server.web.core import PageCaller, render
from corral.store.models import Job, JobWorker, Node, Project, User

router = APIRouter()

PAGE_SIZE = 50
LOG_CHUNK = 64 * 1024  # the most one page load or one poll of the log tail sends
LOG_POLL = "every 2s"
STATES = [s.value for s in JobState]
# States whose reason is worth a column: why it waits, why it failed (as `corral list`).
_REASON_STATES = frozenset({JobState.PENDING.value, JobState.FAILED.value, JobState.LOST.value})


# ---------------------------------------------------------------- cells
# (what a job asks for and how long it ran: `corral.core.jobview`, as the CLI)


def node_cell(job: Job, other_nodes: int) -> str:
    """The node, or for a gang its first worker's node and how many more it spans."""
    if job.node is None:
        return "-"
    return f"{job.node.name} +{other_nodes}" if other_nodes else job.node.name


def when(moment: datetime | None, now: datetime) -> str:
    """``2025-05-01 14:03:22 UTC (5m3s ago)``, or ``-``."""
    if moment is None:
        return "-"
    seconds = (now - moment).total_seconds()
    rel = f"{format_duration(seconds)} ago" if seconds >= 0 else f"in {format_duration(-seconds)}"
    return f"{moment.strftime('%Y-%m-%d %H:%M:%S')} UTC ({rel})"


def job_href(project: str, name: str) -> str:
    return f"/jobs/{quote(project, safe='')}/{quote(name, safe='')}"


# ---------------------------------------------------------------- the jobs table


@dataclass(frozen=True)
class JobFilters:
    project: str = ""
    user: str = ""
    state: str = ""
    name: str = ""  # a part of the job's name, any case
    all: bool = False  # deleted (finished) jobs too
    page: int = 1

    def query(self, **changes: Any) -> str:
        """These filters as a query string (empty values left out), with ``changes``."""
        f = replace(self, **changes)
        params: dict[str, str] = {}
        for key in ("project", "user", "state", "name"):
            if getattr(f, key):
                params[key] = getattr(f, key)
        if f.all:
            params["all"] = "1"
        if f.page > 1:
            params["page"] = str(f.page)
        return urlencode(params)


@dataclass(frozen=True)
class JobRow:
    name: str
    project: str
    user: str
    kind: str
    state: str
    deleted: bool
    node: str
    gpus: str
    run_time: str
    reason: str
    utilization: float | None
    href: str


def _filtered(query: Select[Any], f: JobFilters) -> Select[Any]:
    if f.project:
        query = query.where(Project.name == f.project)
    if f.user:
        query = query.where(User.name == f.user)
    if f.state:
        query = query.where(Job.state == f.state)
    if f.name:
        query = query.where(func.lower(Job.name).contains(f.name.lower(), autoescape=True))
    if not f.all:
        query = query.where(Job.deleted.is_(False))
    return query


def _utilization(now: ClusterNow) -> dict[int, float]:
    """Each job's mean GPU utilization over its GPUs' newest samples (jobs without any
    sample are left out: n/a)."""
    seen: dict[int, list[float]] = {}
    for node in now.nodes:
        for gpu in node.gpus:
            util = gpu.sample.utilization_percent if gpu.sample is not None else None
            if util is None:
                continue
            for ref in {ref.id for ref in gpu.jobs}:
                seen.setdefault(ref, []).append(util)
    return {job_id: sum(values) / len(values) for job_id, values in seen.items()}


def jobs_context(ctx: ServerContext, f: JobFilters) -> dict[str, Any]:
    """One page of jobs: a bounded number of queries whatever the number of jobs (the
    page, its count, the filters' choices, the cluster now), never one per row."""
    now = ctx.clock.now()
    # How many other nodes a gang's workers span (0 for other jobs): per row, but in SQL.
    other_nodes = (
        select(func.count(func.distinct(JobWorker.node_id)))
        .where(JobWorker.job_id == Job.id, JobWorker.node_id != Job.node_id)
        .correlate(Job)
        .scalar_subquery()
    )
    page_query = _filtered(
        select(Job, other_nodes.label("other_nodes"))
        .join(Project, Project.id == Job.project_id)
        .join(User, User.id == Job.user_id)
        .outerjoin(Node, Node.id == Job.node_id)
        .options(
            contains_eager(Job.project),
            contains_eager(Job.user),
            contains_eager(Job.node).lazyload(Node.gpus),
        ),
        f,
    )
    count_query = _filtered(
        select(func.count(Job.id))
        .select_from(Job)
        .join(Project, Project.id == Job.project_id)
        .join(User, User.id == Job.user_id),
        f,
    )
    with ctx.db.read() as s:
        # First: the page's nodes then come with their GPUs already loaded.
        utilization = _utilization(monitoring.cluster_now(s, ctx.metrics, now))
        total = int(s.scalar(count_query) or 0)
        pages = max(1, math.ceil(total / PAGE_SIZE))
        page = min(f.page, pages)
        rows = s.execute(
            page_query.order_by(Job.id.desc()).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
        ).all()
        projects = list(s.scalars(select(Project.name).order_by(Project.name)))
        users = list(s.scalars(select(User.name).order_by(User.name)))
        jobs = [
            JobRow(
                name=job.name,
                project=job.project.name,
                user=job.user.name,
                kind=job.kind,
                state=job.state,
                deleted=job.deleted,
                node=node_cell(job, int(others or 0)),
                gpus=gpus_text(job, job.gpu_ids),
                run_time=run_time_text(
                    job.started_at, job.finished_at, JobState(job.state).is_terminal, now
                ),
                reason=(job_service.shown_reason(job) or "") if job.state in _REASON_STATES else "",
                utilization=utilization.get(job.id),
                href=job_href(job.project.name, job.name),
            )
            for job, others in rows
        ]
    f = replace(f, page=page)
    first = (page - 1) * PAGE_SIZE + 1 if jobs else 0
    return {
        "f": f,
        "jobs": jobs,
        "total": total,
        "pages": pages,
        "page_links": _page_links(page, pages),
        "shown": (first, first + len(jobs) - 1 if jobs else 0),
        "projects": projects,
        "users": users,
        "states": STATES,
    }


def _page_links(page: int, pages: int) -> list[int | None]:
    """Pages to link: the first, the last, and those near the current one (None: a gap)."""
    wanted = sorted({1, pages, *range(max(1, page - 3), min(pages, page + 3) + 1)})
    links: list[int | None] = []
    for n in wanted:
        if links and links[-1] is not None and n - (links[-1] or 0) > 1:
            links.append(None)
        links.append(n)
    return links


def _filters(
    project: str = "",
    user: str = "",
    state: str = "",
    name: str = "",
    all_: bool = Query(False, alias="all"),
    page: int = 1,
) -> JobFilters:
    """The jobs table's filters from the query string (the page's and its fragment's)."""
    return JobFilters(
        project=project.strip(),
        user=user.strip(),
        state=state if state in STATES else "",
        name=name.strip()[:200],
        all=all_,
        page=max(1, page),
    )


Filters = Annotated[JobFilters, Depends(_filters)]


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(ctx: CtxDep, caller: PageCaller, request: Request, f: Filters) -> Response:
    if any(not value.strip() for value in request.query_params.values()):
        # The filter form sends every field, the unused ones empty: send the browser on
        # to the short URL, which is the one worth bookmarking or pasting in a chat.
        query = f.query()
        return RedirectResponse(f"/jobs?{query}" if query else "/jobs", status_code=303)
    return render(request, "jobs.html", caller, **jobs_context(ctx, f))


@router.get("/fragments/jobs", response_class=HTMLResponse)
def jobs_fragment(ctx: CtxDep, caller: PageCaller, request: Request, f: Filters) -> HTMLResponse:
    return render(request, "jobs_table.html", caller, **jobs_context(ctx, f))


# ---------------------------------------------------------------- one job


def job_fields(job: schemas.JobDetail, node: str, now: datetime) -> list[tuple[str, str]]:
    """The fields `corral get` shows, in its order."""
    gpus = gpus_text(job, job.gpu_ids)
    if not (job.node or gpus == "0"):
        gpus += " (not bound yet)"
    ran = run_time_text(job.started_at, job.finished_at, job.state.is_terminal, now)
    return [
        ("Name", job.name),
        ("Project", job.project),
        ("User", job.user),
        ("Kind", job.kind.value),
        ("State", job.state.value + (" (deleted)" if job.deleted else "")),
        ("Reason", job.reason or "-"),
        ("Node", node),
        ("GPUs", gpus),
        ("GPU UUIDs", "\n".join(job.gpu_uuids) or "-"),
        ("CPUs", "-" if job.cpus is None else f"{job.cpus:g}"),
        ("Memory", format_bytes(job.memory_bytes)),
        ("Command", shlex.join(job.command) or "(the image's own command)"),
        *container_fields(job.container),
        ("Workdir", job.workdir or "-"),
        # Names only: values are often secrets, and this page ends up in screenshots.
        ("Env", ", ".join(sorted(job.env)) if job.env else "-"),
        ("Priority", str(job.priority)),
        ("Pool", job.pool or "-"),
        ("Created", when(job.created_at, now)),
        ("Started", when(job.started_at, now)),
        ("Finished", when(job.finished_at, now)),
        ("Run time", ran),
        ("Exit code", "-" if job.exit_code is None else str(job.exit_code)),
        ("Attempt", str(job.attempt)),
        ("Grace period", format_duration(job.grace_seconds)),
    ]


def _job_detail(
    s: Session, caller: Caller, project: str, name: str
) -> tuple[Job, schemas.JobDetail, bool]:
    job = job_service.find_job(s, project, name)
    return job, job_service.job_detail(s, job), can_use_project(s, caller, job.project)


def job_context(ctx: ServerContext, caller: Caller, project: str, name: str) -> dict[str, Any]:
    now = ctx.clock.now()
    with ctx.db.read() as s:
        job, detail, may_read = _job_detail(s, caller, project, name)
        others = {w.node for w in detail.worker_list if w.node and w.node != detail.node}
        node = "-" if detail.node is None else detail.node + (f" +{len(others)}" if others else "")
        fields = job_fields(detail, node, now)
    return {
        "job": detail,
        "fields": fields,
        "now": now,
        "when": when,
        "may_read_logs": may_read,
        "href": job_href(detail.project, detail.name),
        "api_href": f"/api/v1{job_href(detail.project, detail.name)}",
        "ranks": list(range(max(1, job.workers))),
    }


def _missing(request: Request, caller: Caller, project: str, name: str) -> HTMLResponse:
    page = render(request, "job_missing.html", caller, project=project, name=name)
    page.status_code = 404
    return page


@router.get("/jobs/{project}/{name}", response_class=HTMLResponse)
def job_page(
    ctx: CtxDep,
    caller: PageCaller,
    request: Request,
    project: str,
    name: str,
    rank: int = Query(0, ge=0),
) -> HTMLResponse:
    try:
        context = job_context(ctx, caller, project, name)
    except NotFound:
        return _missing(request, caller, project, name)
    job: schemas.JobDetail = context["job"]
    rank = min(rank, job.workers - 1)
    log: LogChunk | None = None
    if context["may_read_logs"]:
        # The page opens on the newest output (the last LOG_CHUNK bytes); polls go on
        # from there.
        start = 0
        if job.attempt > 0:
            size = ctx.logs.size(job.id, job.attempt, rank)
            start = _char_start(ctx, job.id, job.attempt, rank, max(0, size - LOG_CHUNK))
        log = log_chunk(ctx, job.id, job.attempt, rank, start)
    return render(
        request,
        "job.html",
        caller,
        rank=rank,
        log=log,
        tail_url=_tail_url(context["href"], log, rank) if log else None,
        **context,
    )


@router.get("/fragments/jobs/{project}/{name}", response_class=HTMLResponse)
def job_fragment(
    ctx: CtxDep, caller: PageCaller, request: Request, project: str, name: str
) -> HTMLResponse:
    try:
        context = job_context(ctx, caller, project, name)
    except NotFound:
        return HTMLResponse('<p class="empty">This job no longer exists.</p>', status_code=404)
    return render(request, "job_body.html", caller, **context)


# ---------------------------------------------------------------- the log tail


@dataclass(frozen=True)
class LogChunk:
    """Output to append, and where the next poll reads (``poll`` None: the end)."""

    skipped: int  # bytes before the first one shown (the page shows only the newest)
    text: str
    attempt: int
    offset: int
    poll: str | None  # an hx-trigger: "load" to fetch more at once, else every few seconds


def _decode(data: bytes, final: bool) -> tuple[str, int]:
    """Text of ``data`` and how many bytes it used: a character cut at the end of the
    chunk waits for the next one (unless ``final``)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(data, final=final)
    held = 0 if final else len(decoder.getstate()[0])
    return text, len(data) - held


def _char_start(ctx: ServerContext, job_id: int, attempt: int, rank: int, offset: int) -> int:
    """``offset``, moved past UTF-8 continuation bytes to the start of a character."""
    if offset == 0:
        return 0
    head = ctx.logs.read(job_id, attempt, offset, limit=4, rank=rank)
    skip = 0
    while skip < min(3, len(head)) and 0x80 <= head[skip] < 0xC0:
        skip += 1
    return offset + skip


def _job_attempt(ctx: ServerContext, job_id: int) -> tuple[int, bool]:
    """The job's current attempt, and whether it is over for good."""
    with ctx.db.read() as s:
        job = s.get(Job, job_id)
        if job is None:
            return 0, True
        return job.attempt, JobState(job.state).is_terminal


def log_chunk(ctx: ServerContext, job_id: int, attempt: int, rank: int, offset: int) -> LogChunk:
    """The output of worker ``rank`` of ``attempt`` from ``offset`` (at most LOG_CHUNK
    bytes). Once that attempt's output is complete: the next attempt's (a requeued job),
    or the end when the job is over."""
    data = ctx.logs.read(job_id, attempt, offset, limit=LOG_CHUNK, rank=rank) if attempt else b""
    if len(data) == LOG_CHUNK:  # more to come at once
        text, used = _decode(data, final=False)
        return LogChunk(offset, text, attempt, offset + used, "load")
    if not _log_finished(ctx, job_id, attempt, rank):
        text, used = _decode(data, final=False)
        return LogChunk(offset, text, attempt, offset + used, LOG_POLL)
    # Complete: read once more (the last chunk may have landed since), to the end.
    if attempt:
        data = ctx.logs.read(job_id, attempt, offset, limit=LOG_CHUNK, rank=rank)
    if len(data) == LOG_CHUNK:
        text, used = _decode(data, final=False)
        return LogChunk(offset, text, attempt, offset + used, "load")
    text, used = _decode(data, final=True)
    latest, over = _job_attempt(ctx, job_id)
    if latest > attempt:
        if attempt:
            text += f"\n[corral: attempt {latest} started]\n"
        return LogChunk(offset, text, latest, 0, "load")
    if over:
        return LogChunk(offset, text, attempt, offset + used, None)
    # Waits to start (again), or this gang worker ended while others run.
    return LogChunk(offset, text, attempt, offset + used, LOG_POLL)


def _tail_url(href: str, log: LogChunk, rank: int) -> str:
    query = urlencode({"offset": log.offset, "rank": rank, "attempt": log.attempt})
    return f"/fragments{href}/log?{query}"


def _log_forbidden(project: str) -> HTMLResponse:
    return HTMLResponse(
        f'<p class="empty" data-testid="logs-forbidden">Logs are visible to members of '
        f"project {escape(project)}.</p>",
        status_code=403,
    )


@router.get("/fragments/jobs/{project}/{name}/log", response_class=HTMLResponse)
def job_log_fragment(
    ctx: CtxDep,
    caller: PageCaller,
    request: Request,
    project: str,
    name: str,
    offset: int = Query(0, ge=0),
    rank: int = Query(0, ge=0),
    attempt: int | None = Query(None, ge=0),
) -> HTMLResponse:
    """New output after ``offset``, then the element that polls for more (none at the
    end); htmx swaps both in for the previous poller."""
    try:
        job_id, chosen = _log_target(ctx, caller, project, name, attempt, rank)
    except NotFound as e:
        return HTMLResponse(f'<p class="empty">{escape(e.message)}</p>', status_code=404)
    except Forbidden:
        return _log_forbidden(project)
    except InvalidRequest as e:
        return HTMLResponse(f'<p class="empty">{escape(e.message)}</p>', status_code=422)
    log = log_chunk(ctx, job_id, chosen, rank, offset)
    href = job_href(project, name)
    return render(
        request,
        "job_log.html",
        caller,
        log=log,
        tail_url=_tail_url(href, log, rank),
    )
