"""The projects page: each project's settings, fair share and use now, and GPUs allocated
per project over time (the Run:ai analytics view)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from corral.core.states import ACTIVE_JOB_STATES, JobState
from corral.scheduler import ProjectShare
from corral.scheduler.units import MIG_COMPUTE_SLICES, mig_profile_slices
from corral.server.api.deps import CtxDep
from corral.server.context import ServerContext
from corral.server.web.core import PageCaller, render
from corral.store.models import Job, Project

router = APIRouter()

# The chart's periods: the last hour (raw samples, there at once) up to a month.
PERIODS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7),
           "month": timedelta(days=30)}  # fmt: skip


@dataclass(frozen=True)
class ProjectRow:
    name: str
    depth: int  # 0: a top-level project; 1: under a department …
    parent: str | None
    quota: float
    weight: float
    weight_is_quota: bool  # no weight set: the quota is the weight
    limit: float | None
    priority: int
    pools: list[str] | None  # None: every pool
    interactive_limit_seconds: float | None
    gpu_memory_policy: str  # off | warn | stop: a shared-GPU job over its memory share
    fair_share: float | None  # None: no scheduling cycle has run yet
    allocated: float
    pending: int
    running: int  # jobs holding devices (bound, starting, running, stopping)


@dataclass
class _Use:
    allocated: float = 0.0
    pending: int = 0
    running: int = 0


def _usage(session: Session) -> dict[int, _Use]:
    """Jobs pending and holding devices, and GPUs held, of every project: one query.

    A fraction counts as itself, a gang as its GPUs times its workers, a MIG instance as
    its share of the GPU's 7 compute slices; a job being stopped to make room for
    another no longer counts (its devices belong to that job).
    """
    owns = Job.preempted_by_id.is_(None)
    rows = session.execute(
        select(
            Job.project_id,
            Job.state,
            Job.mig_profile,
            owns.label("owns"),
            func.count().label("jobs"),
            func.coalesce(func.sum(Job.gpus * Job.workers), 0.0).label("gpus"),
        )
        .where(Job.state.in_([s.value for s in ACTIVE_JOB_STATES]))
        .group_by(Job.project_id, Job.state, Job.mig_profile, owns)
    )
    use: dict[int, _Use] = {}
    for r in rows:
        entry = use.setdefault(r.project_id, _Use())
        state = JobState(r.state)
        if state is JobState.PENDING:
            entry.pending += r.jobs
        if not state.holds_devices:
            continue
        entry.running += r.jobs
        if not r.owns:
            continue
        if r.mig_profile is not None:
            slices = mig_profile_slices(r.mig_profile) or 0
            entry.allocated += r.jobs * slices / MIG_COMPUTE_SLICES
        else:
            entry.allocated += float(r.gpus)
    return use


def project_rows(session: Session, shares: Mapping[str, ProjectShare]) -> list[ProjectRow]:
    """Every project, departments before the projects under them (depth-first by name)."""
    projects = list(session.scalars(select(Project).order_by(Project.name)))
    use = _usage(session)
    by_id = {p.id: p for p in projects}
    children: dict[int | None, list[Project]] = {}
    for p in projects:
        parent = p.parent_id if p.parent_id in by_id else None
        children.setdefault(parent, []).append(p)
    rows: list[ProjectRow] = []
    seen: set[int] = set()

    def visit(p: Project, depth: int) -> None:
        if p.id in seen:  # a cycle (refused by validation): show each project once
            return
        seen.add(p.id)
        u = use.get(p.id, _Use())
        share = shares.get(p.name)
        parent = by_id.get(p.parent_id) if p.parent_id is not None else None
        rows.append(
            ProjectRow(
                name=p.name,
                depth=depth,
                parent=parent.name if parent else None,
                quota=p.quota,
                weight=p.quota if p.weight is None else p.weight,
                weight_is_quota=p.weight is None,
                limit=p.limit,
                priority=p.priority,
                pools=list(p.pools) if p.pools is not None else None,
                interactive_limit_seconds=p.interactive_limit_seconds,
                gpu_memory_policy=p.gpu_memory_policy,
                fair_share=share.fair_share if share else None,
                allocated=u.allocated,
                pending=u.pending,
                running=u.running,
            )
        )
        for child in children.get(p.id, []):
            visit(child, depth + 1)

    for p in children.get(None, []):
        visit(p, 0)
    for p in projects:  # anything left (only in a cycle)
        visit(p, 0)
    return rows


def projects_context(ctx: ServerContext, period: str = "hour") -> dict[str, Any]:
    with ctx.db.read() as s:
        rows = project_rows(s, dict(ctx.scheduling.shares))
    scale = max(
        [1.0, *(max(r.allocated, r.fair_share or 0.0, r.quota, r.limit or 0.0) for r in rows)]
    )
    if period not in PERIODS:
        period = "hour"
    chart = "/api/v1/metrics/projects?metric=allocated_gpus"
    if period != "hour":  # the API's default window is the last hour
        start = (ctx.clock.now() - PERIODS[period]).isoformat(timespec="seconds")
        chart += "&start=" + quote(start, safe="")
    return {
        "rows": rows,
        "scale": scale,
        "total_quota": sum(r.quota for r in rows if r.depth == 0),
        "total_allocated": sum(r.allocated for r in rows),
        "chart_url": chart,
        "period": period,
        "periods": list(PERIODS),
        "cycled": bool(ctx.scheduling.shares),
    }


@router.get("/projects", response_class=HTMLResponse)
def projects_page(
    ctx: CtxDep, caller: PageCaller, request: Request, period: str = "hour"
) -> HTMLResponse:
    return render(request, "projects.html", caller, **projects_context(ctx, period))


@router.get("/fragments/projects", response_class=HTMLResponse)
def projects_fragment(ctx: CtxDep, caller: PageCaller, request: Request) -> HTMLResponse:
    return render(request, "projects_table.html", caller, **projects_context(ctx))
