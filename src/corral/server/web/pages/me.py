"""My view (a researcher's jobs, projects, free GPUs and GPUs over time) and the admin page.

Both read the store once per request in a handful of aggregate queries (no query per job,
user or project). The admin page is read-only and never shows a secret: the store holds
only hashes of tokens, and not even those are shown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from corral.core.gpuview import free_report, short_model
from corral.core.jobview import gpus_text
from corral.core.quantities import format_bytes
from corral.core.states import ACTIVE_JOB_STATES, JobState
from corral.core.telemetry import ClusterNow
from corral.scheduler.units import MIG_COMPUTE_SLICES, mig_profile_slices
from corral.server.api.deps import CtxDep
from corral.server.context import ServerContext
from corral.server.services import monitoring
from corral.server.services.accounts import Caller
from corral.server.services.jobs import shown_reason
from corral.server.web.core import PageCaller, render
from corral.store.models import ApiToken, Job, JoinToken, Node, Project, ProjectMember, User

router = APIRouter()

LIVE_LIMIT = 100  # live jobs shown on My view; the jobs page pages through the rest
FINISHED_LIMIT = 20  # the newest finished jobs shown under them; the jobs page has the rest
_LIVE = [s.value for s in ACTIVE_JOB_STATES]


# ---------------------------------------------------------------- my jobs


@dataclass(frozen=True)
class MyJob:
    """One row of "my jobs"."""

    name: str
    project: str
    kind: str
    state: str
    gpus: str  # as the jobs table and `corral list`: "2 (0,1)", "4x8", "0.5 (3)", "mig 1g.10gb"
    node: str | None
    reason: str | None
    live: bool
    deleted: bool
    created_at: datetime
    run_seconds: float | None  # since it started (or until it ended); None: never started
    finished_at: datetime | None


def _my_job(job: Job, now: datetime) -> MyJob:
    state = JobState(job.state)
    run: float | None = None
    if job.started_at is not None:
        end = job.finished_at if state.is_terminal and job.finished_at else now
        run = max(0.0, (end - job.started_at).total_seconds())
    node = job.node.name if job.node is not None else None
    if node is not None and job.workers > 1:
        node = f"{node} +{job.workers - 1} workers"
    return MyJob(
        name=job.name,
        project=job.project.name,
        kind=job.kind,
        state=job.state,
        gpus=gpus_text(job, job.gpu_ids),
        node=node,
        reason=shown_reason(job),
        live=not state.is_terminal,
        deleted=job.deleted,
        created_at=job.created_at,
        run_seconds=run,
        finished_at=job.finished_at,
    )


@dataclass(frozen=True)
class MyJobs:
    rows: list[MyJob]  # live jobs (holding GPUs first, then pending), then finished ones
    live_total: int
    finished_total: int

    @property
    def live_shown(self) -> int:
        return sum(1 for j in self.rows if j.live)

    @property
    def finished_shown(self) -> int:
        return sum(1 for j in self.rows if not j.live)


def my_jobs(session: Session, caller: Caller, now: datetime) -> MyJobs:
    """The caller's live jobs (those holding GPUs first, then the waiting ones; newest
    first in each), then their newest finished ones, and how many of each there are."""
    waiting = case((Job.state.in_([JobState.PENDING.value, JobState.PREEMPTED.value]), 1), else_=0)
    live = session.scalars(
        select(Job)
        .where(Job.user_id == caller.id, Job.state.in_(_LIVE))
        .order_by(waiting, Job.id.desc())
        .limit(LIVE_LIMIT)
    ).unique()
    done_filter = (Job.user_id == caller.id, Job.state.not_in(_LIVE), Job.deleted.is_(False))
    done = session.scalars(
        select(Job).where(*done_filter).order_by(Job.id.desc()).limit(FINISHED_LIMIT)
    ).unique()
    rows = [_my_job(j, now) for j in live] + [_my_job(j, now) for j in done]
    live_total = session.scalar(
        select(func.count(Job.id)).where(Job.user_id == caller.id, Job.state.in_(_LIVE))
    )
    finished_total = session.scalar(select(func.count(Job.id)).where(*done_filter))
    return MyJobs(
        rows=rows, live_total=int(live_total or 0), finished_total=int(finished_total or 0)
    )


def jobs_context(ctx: ServerContext, caller: Caller) -> dict[str, Any]:
    now = ctx.clock.now()
    with ctx.db.read() as s:
        jobs = my_jobs(s, caller, now)
    return {"jobs": jobs, "now": now}


# ---------------------------------------------------------------- my projects


@dataclass(frozen=True)
class MyProject:
    name: str
    quota: float
    fair_share: float | None  # None: the scheduler has not run a cycle with it yet
    allocated: float | None
    pending: int | None
    mine: float  # GPUs the caller's jobs hold in it now


def my_projects(session: Session, ctx: ServerContext, caller: Caller) -> list[MyProject]:
    rows = session.execute(
        select(Project.name, Project.quota)
        .join(ProjectMember, ProjectMember.project_id == Project.id)
        .where(ProjectMember.user_id == caller.id)
        .order_by(Project.name)
    ).all()
    mine: dict[str, float] = {}
    holding = [st.value for st in JobState if st.holds_devices]
    for project, gpus, workers, mig in session.execute(
        select(Project.name, Job.gpus, Job.workers, Job.mig_profile)
        .join(Project, Project.id == Job.project_id)
        .where(Job.user_id == caller.id, Job.state.in_(holding))
    ):
        # As the history of users' GPUs counts them (`monitoring.usage_rows`).
        held = (mig_profile_slices(mig) or 0) / MIG_COMPUTE_SLICES if mig else gpus * workers
        mine[project] = mine.get(project, 0.0) + held
    shares = ctx.scheduling.shares
    out = []
    for name, quota in rows:
        share = shares.get(name)
        out.append(
            MyProject(
                name=name,
                quota=quota,
                fair_share=share.fair_share if share else None,
                allocated=share.allocated if share else None,
                pending=share.pending if share else None,
                mine=mine.get(name, 0.0),
            )
        )
    return out


# ---------------------------------------------------------------- free GPUs now


@dataclass(frozen=True)
class FreeRow:
    """Whole GPUs free now on one node, of one model."""

    node: str
    pool: str
    model: str
    simulated: bool
    indices: list[int]
    memory: str


@dataclass
class FreeNow:
    total: int = 0
    by_model: dict[str, int] = field(default_factory=dict)
    rows: list[FreeRow] = field(default_factory=list)
    shared: list[dict[str, Any]] = field(default_factory=list)  # GPUs with room for a share
    mig: list[dict[str, Any]] = field(default_factory=list)  # free MIG instances
    not_ready: dict[str, str] = field(default_factory=dict)  # node → state


def free_now(cluster: ClusterNow) -> FreeNow:
    """What `corral free` shows: on ready nodes, GPUs no job holds and nobody uses outside
    Corral (by node and model), shared GPUs with room, free MIG instances."""
    report = free_report(cluster)
    nodes = {n.name: n for n in cluster.nodes}
    out = FreeNow(total=report.free_gpus, not_ready=report.not_ready)
    by_model: Counter[str] = Counter()
    for nf in report.nodes:
        node = nodes[nf.node]
        gpus = {g.index: g for g in node.gpus}
        groups: dict[str, list[int]] = {}
        for index in nf.free_gpus:
            groups.setdefault(short_model(gpus[index].model), []).append(index)
        for model, indices in groups.items():
            by_model[model] += len(indices)
            memory = {format_bytes(gpus[i].memory_bytes) for i in indices}
            out.rows.append(
                FreeRow(
                    node=nf.node,
                    pool=nf.pool,
                    model=model,
                    simulated=node.simulated,
                    indices=indices,
                    memory=", ".join(sorted(memory)),
                )
            )
        for room in nf.shared:
            out.shared.append(
                {
                    "node": nf.node,
                    "gpu": room.gpu,
                    "model": short_model(gpus[room.gpu].model),
                    "memory_bytes": room.memory_bytes,
                    "free_memory_bytes": room.free_memory_bytes,
                    "jobs": room.jobs,
                    "simulated": node.simulated,
                }
            )
        for mig in nf.mig:
            out.mig.append(
                {"node": nf.node, "gpu": mig.gpu, "profile": mig.profile, "free": mig.free}
            )
    out.by_model = dict(sorted(by_model.items()))
    return out


def free_context(ctx: ServerContext) -> dict[str, Any]:
    with ctx.db.read() as s:
        cluster = monitoring.cluster_now(s, ctx.metrics, ctx.clock.now())
    return {"free": free_now(cluster)}


def me_context(ctx: ServerContext, caller: Caller) -> dict[str, Any]:
    now = ctx.clock.now()
    with ctx.db.read() as s:
        jobs = my_jobs(s, caller, now)
        projects = my_projects(s, ctx, caller)
        cluster = monitoring.cluster_now(s, ctx.metrics, now)
    return {
        "jobs": jobs,
        "projects": projects,
        "free": free_now(cluster),
        "now": now,
        "day_ago": (now - timedelta(days=1)).isoformat(),
    }


@router.get("/me", response_class=HTMLResponse)
def me(ctx: CtxDep, caller: PageCaller, request: Request) -> HTMLResponse:
    return render(request, "me.html", caller, **me_context(ctx, caller))


@router.get("/fragments/me/jobs", response_class=HTMLResponse)
def me_jobs_fragment(ctx: CtxDep, caller: PageCaller, request: Request) -> HTMLResponse:
    return render(request, "me_jobs.html", caller, **jobs_context(ctx, caller))


@router.get("/fragments/me/free", response_class=HTMLResponse)
def me_free_fragment(ctx: CtxDep, caller: PageCaller, request: Request) -> HTMLResponse:
    return render(request, "me_free.html", caller, **free_context(ctx))


# ---------------------------------------------------------------- the admin page


@dataclass(frozen=True)
class AdminUser:
    name: str
    role: str
    unix_user: str
    projects: list[str]
    tokens: int
    created_at: datetime


@dataclass(frozen=True)
class AdminProject:
    name: str
    quota: float
    weight: float
    limit: float | None
    priority: int
    pools: list[str] | None
    parent: str | None
    members: list[str]
    fair_share: float | None
    allocated: float | None
    pending: int | None


@dataclass(frozen=True)
class AdminJoinToken:
    id: int
    created_at: datetime
    expires_at: datetime | None
    expired: bool


def admin_context(ctx: ServerContext) -> dict[str, Any]:
    now = ctx.clock.now()
    with ctx.db.read() as s:
        memberships = s.execute(
            select(ProjectMember.user_id, ProjectMember.project_id, User.name, Project.name)
            .join(User, User.id == ProjectMember.user_id)
            .join(Project, Project.id == ProjectMember.project_id)
            .order_by(User.name, Project.name)
        ).all()
        projects_of: dict[int, list[str]] = {}
        members_of: dict[int, list[str]] = {}
        for user_id, project_id, user_name, project_name in memberships:
            projects_of.setdefault(user_id, []).append(project_name)
            members_of.setdefault(project_id, []).append(user_name)
        tokens: dict[int, int] = {
            user_id: count
            for user_id, count in s.execute(
                select(ApiToken.user_id, func.count(ApiToken.id)).group_by(ApiToken.user_id)
            )
        }
        users = [
            AdminUser(
                name=u.name,
                role=u.role,
                unix_user=u.unix_user,
                projects=projects_of.get(u.id, []),
                tokens=int(tokens.get(u.id, 0)),
                created_at=u.created_at,
            )
            for u in s.scalars(select(User).order_by(User.name))
        ]
        project_rows = list(s.scalars(select(Project).order_by(Project.name)))
        names = {p.id: p.name for p in project_rows}
        shares = ctx.scheduling.shares
        projects = []
        for p in project_rows:
            share = shares.get(p.name)
            projects.append(
                AdminProject(
                    name=p.name,
                    quota=p.quota,
                    weight=p.quota if p.weight is None else p.weight,
                    limit=p.limit,
                    priority=p.priority,
                    pools=list(p.pools) if p.pools is not None else None,
                    parent=names.get(p.parent_id) if p.parent_id is not None else None,
                    members=sorted(members_of.get(p.id, [])),
                    fair_share=share.fair_share if share else None,
                    allocated=share.allocated if share else None,
                    pending=share.pending if share else None,
                )
            )
        join_tokens = [
            AdminJoinToken(
                id=t.id,
                created_at=t.created_at,
                expires_at=t.expires_at,
                expired=t.expires_at is not None and t.expires_at <= now,
            )
            for t in s.execute(
                select(JoinToken.id, JoinToken.created_at, JoinToken.expires_at).order_by(
                    JoinToken.id
                )
            )
        ]
        nodes: dict[str, int] = {
            state: count
            for state, count in s.execute(
                select(Node.state, func.count(Node.id)).group_by(Node.state)
            )
        }
    return {
        "users": users,
        "projects": projects,
        "join_tokens": join_tokens,
        "nodes": dict(sorted(nodes.items())),
        "nodes_total": sum(nodes.values()),
        "now": now,
    }


@router.get("/admin", response_class=HTMLResponse)
def admin(ctx: CtxDep, caller: PageCaller, request: Request) -> HTMLResponse:
    if not caller.is_admin:
        page = render(request, "admin_forbidden.html", caller)
        page.status_code = 403
        return page
    return render(request, "admin.html", caller, **admin_context(ctx))
