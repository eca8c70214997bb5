"""The overview: nodes, GPUs by use, jobs, utilization, GPUs per project, the nodes panel."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from corral.server.api.deps import CtxDep
from corral.server.context import ServerContext
from corral.server.services import monitoring
from corral.server.web.core import PageCaller, render

router = APIRouter()


def overview_context(ctx: ServerContext) -> dict[str, Any]:
    with ctx.db.read() as s:
        now = monitoring.cluster_now(s, ctx.metrics, ctx.clock.now())
        summary = monitoring.summarize(s, now)
    # A project with no quota, no GPUs and nothing waiting (often "default") would be an
    # empty row: it is counted under the chart, and listed on the projects page.
    every = sorted(ctx.scheduling.shares.items())
    projects = [(n, p) for n, p in every if p.quota or p.allocated or p.fair_share or p.pending]
    scale = max(
        [1.0, *(max(p.allocated, p.fair_share, p.quota) for _, p in projects)],
    )
    return {
        "s": summary,
        "now": now,
        "projects": projects,
        "idle_projects": len(every) - len(projects),
        "scale": scale,
        "day_ago": (ctx.clock.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


@router.get("/", response_class=HTMLResponse)
def overview(ctx: CtxDep, caller: PageCaller, request: Request) -> HTMLResponse:
    return render(request, "overview.html", caller, **overview_context(ctx))


@router.get("/fragments/overview", response_class=HTMLResponse)
def overview_fragment(ctx: CtxDep, caller: PageCaller, request: Request) -> HTMLResponse:
    return render(request, "overview_body.html", caller, **overview_context(ctx))
