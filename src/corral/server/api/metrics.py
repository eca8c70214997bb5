"""Monitoring as users see it: the cluster now, and history by node, GPU, host or job.

Any signed-in user may read these (what GPUs do is no secret inside a cluster; job
*logs* stay private to their projects).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse

from corral.core.errors import InvalidRequest, Unauthorized
from corral.core.telemetry import (
    ClusterNow,
    DiskUsageList,
    NodeDiskUsage,
    SeriesList,
    SeriesOut,
)
from corral.server.api.deps import CallerDep, CtxDep
from corral.server.context import ServerContext
from corral.server.metrics.prometheus import render
from corral.server.metrics.store import FAMILIES, Family, Resolution
from corral.server.services import auth, monitoring
from corral.server.services.jobs import find_job
from corral.store.models import JobWorker

router = APIRouter(prefix="/metrics", tags=["metrics"])

ResolutionQuery = Annotated[
    Literal["auto", "raw", "1m", "1h"],
    Query(description="raw (about 1 point/s), 1m or 1h averages; auto: by the span"),
]
StartQuery = Annotated[
    datetime | None, Query(description="Start (ISO 8601); default: an hour before end")
]
EndQuery = Annotated[datetime | None, Query(description="End (ISO 8601); default: now")]


@router.get("/now", response_model=ClusterNow)
def now(ctx: CtxDep, caller: CallerDep) -> ClusterNow:
    """Every node and GPU with its jobs, unmanaged use and newest sample."""
    with ctx.db.read() as s:
        return monitoring.cluster_now(s, ctx.metrics, ctx.clock.now())


def _window(
    ctx: ServerContext,
    start: datetime | None,
    end: datetime | None,
    resolution: str,
    family: Family | None = None,
) -> tuple[float, float, Resolution]:
    now = ctx.clock.now()
    end_at = _utc(end) if end else now
    start_at = _utc(start) if start else end_at - timedelta(hours=1)
    if start_at >= end_at:
        raise InvalidRequest("start: must be before end", field="start")
    s, e = start_at.timestamp(), end_at.timestamp()
    chosen: Resolution = (
        ctx.metrics.store.choose_resolution(s, e, now.timestamp(), family)
        if resolution == "auto"
        else resolution  # type: ignore[assignment]
    )
    return s, e, chosen


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _series(
    ctx: ServerContext,
    family: Family,
    metrics: list[str],
    start: float,
    end: float,
    resolution: Resolution,
    where: dict[str, object],
    in_: dict[str, Sequence[Any]] | None = None,
) -> list[SeriesOut]:
    known = FAMILIES[family].metrics
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise InvalidRequest(
            f"metric: unknown {', '.join(unknown)} (known: {', '.join(known)})", field="metric"
        )
    return [
        SeriesOut(key=dict(s.key), metric=s.metric, points=s.points)
        for s in ctx.metrics.store.query(family, metrics, start, end, resolution, where, in_)
    ]


def _list(start: float, end: float, resolution: Resolution, series: list[SeriesOut]) -> SeriesList:
    return SeriesList(
        resolution=resolution,
        start=datetime.fromtimestamp(start, UTC),
        end=datetime.fromtimestamp(end, UTC),
        series=series,
    )


@router.get("/gpus", response_model=SeriesList)
def gpu_series(
    ctx: CtxDep,
    caller: CallerDep,
    node: str,
    gpu: Annotated[list[int] | None, Query(description="GPU indices; default: all")] = None,
    metric: Annotated[
        list[str] | None, Query(description="default: utilization_percent, memory_used_bytes")
    ] = None,
    start: StartQuery = None,
    end: EndQuery = None,
    resolution: ResolutionQuery = "auto",
) -> SeriesList:
    """A node's GPUs over time (one series per GPU and metric)."""
    s, e, res = _window(ctx, start, end, resolution, "gpu")
    metrics = metric or ["utilization_percent", "memory_used_bytes"]
    in_: dict[str, Sequence[Any]] | None = {"gpu": gpu} if gpu else None
    return _list(s, e, res, _series(ctx, "gpu", metrics, s, e, res, {"node": node}, in_))


@router.get("/hosts", response_model=SeriesList)
def host_series(
    ctx: CtxDep,
    caller: CallerDep,
    node: str,
    metric: Annotated[
        list[str] | None, Query(description="default: cpu_percent, memory_used_bytes")
    ] = None,
    start: StartQuery = None,
    end: EndQuery = None,
    resolution: ResolutionQuery = "auto",
) -> SeriesList:
    """A node's host metrics over time."""
    s, e, res = _window(ctx, start, end, resolution, "host")
    metrics = metric or ["cpu_percent", "memory_used_bytes"]
    return _list(s, e, res, _series(ctx, "host", metrics, s, e, res, {"node": node}))


@router.get("/projects", response_model=SeriesList)
def project_series(
    ctx: CtxDep,
    caller: CallerDep,
    project: Annotated[list[str] | None, Query(description="default: every project")] = None,
    metric: Annotated[
        list[str] | None,
        Query(
            description="quota_gpus, fair_share_gpus, allocated_gpus, pending_jobs "
            "(default: allocated_gpus)"
        ),
    ] = None,
    start: StartQuery = None,
    end: EndQuery = None,
    resolution: ResolutionQuery = "auto",
) -> SeriesList:
    """Projects over time: GPUs allocated (and quota, fair share, pending jobs), as
    recorded every 15 s from the scheduler's last cycle."""
    return _named(ctx, "project", project, metric, start, end, resolution)


@router.get("/users", response_model=SeriesList)
def user_series(
    ctx: CtxDep,
    caller: CallerDep,
    user: Annotated[list[str] | None, Query(description="default: every user")] = None,
    metric: Annotated[
        list[str] | None,
        Query(description="allocated_gpus, running_jobs (default: allocated_gpus)"),
    ] = None,
    start: StartQuery = None,
    end: EndQuery = None,
    resolution: ResolutionQuery = "auto",
) -> SeriesList:
    """Users over time: GPUs their jobs held and how many jobs held GPUs."""
    return _named(ctx, "user", user, metric, start, end, resolution)


@router.get("/cluster", response_model=SeriesList)
def cluster_series(
    ctx: CtxDep,
    caller: CallerDep,
    metric: Annotated[
        list[str] | None,
        Query(
            description="utilization_percent (mean over GPUs), gpus_total, gpus_allocated, "
            "gpus_unmanaged, jobs_running, jobs_pending (default: utilization_percent)"
        ),
    ] = None,
    start: StartQuery = None,
    end: EndQuery = None,
    resolution: ResolutionQuery = "auto",
) -> SeriesList:
    """The whole cluster over time, recorded every 15 s."""
    s, e, res = _window(ctx, start, end, resolution, "cluster")
    metrics = metric or ["utilization_percent"]
    return _list(s, e, res, _series(ctx, "cluster", metrics, s, e, res, {}))


def _named(
    ctx: ServerContext,
    family: Literal["project", "user"],
    names: list[str] | None,
    metric: list[str] | None,
    start: datetime | None,
    end: datetime | None,
    resolution: str,
) -> SeriesList:
    """Series of projects or users (all, or those named); default metric allocated_gpus."""
    s, e, res = _window(ctx, start, end, resolution, family)
    in_: dict[str, Sequence[Any]] | None = {family: names} if names else None
    metrics = metric or ["allocated_gpus"]
    return _list(s, e, res, _series(ctx, family, metrics, s, e, res, {}, in_))


@router.get("/jobs/{project}/{name}", response_model=SeriesList)
def job_series(
    ctx: CtxDep,
    caller: CallerDep,
    project: str,
    name: str,
    metric: Annotated[
        list[str] | None,
        Query(
            description="GPU metrics (of the GPUs it holds) and host metrics cpu_percent, "
            "memory_bytes; default: utilization_percent, memory_used_bytes, cpu_percent"
        ),
    ] = None,
    start: StartQuery = None,
    end: EndQuery = None,
    resolution: ResolutionQuery = "auto",
) -> SeriesList:
    """A job over its run (its current attempt): the GPUs it holds, and its processes'
    CPU and memory. The window defaults to the job's start to its end (or now)."""
    with ctx.db.read() as db:
        job = find_job(db, project, name)
        if job.started_at is None:
            return SeriesList(
                resolution="raw", start=ctx.clock.now(), end=ctx.clock.now(), series=[]
            )
        places: list[tuple[str, list[int], int]] = []
        if job.workers > 1:
            for w in (
                db.query(JobWorker).filter(JobWorker.job_id == job.id).order_by(JobWorker.rank)
            ):
                if w.node is not None:
                    places.append((w.node.name, list(w.gpu_ids), w.rank))
        elif job.node is not None:
            places.append((job.node.name, list(job.gpu_ids), 0))
        started, finished, job_id = job.started_at, job.finished_at, job.id
    s, e, res = _window(
        ctx, start or started, end or finished or ctx.clock.now(), resolution, "gpu"
    )
    wanted = metric or ["utilization_percent", "memory_used_bytes", "cpu_percent"]
    gpu_metrics = [m for m in wanted if m in FAMILIES["gpu"].metrics]
    host_metrics = [m for m in wanted if m in FAMILIES["job"].metrics]
    unknown = [m for m in wanted if m not in gpu_metrics and m not in host_metrics]
    if unknown:
        raise InvalidRequest(f"metric: unknown {', '.join(unknown)}", field="metric")
    series: list[SeriesOut] = []
    for node, gpus, _rank in places:
        if gpu_metrics and gpus:
            series += _series(
                ctx, "gpu", gpu_metrics, s, e, res, {"node": node}, {"gpu": list(gpus)}
            )
    if host_metrics:
        series += _series(ctx, "job", host_metrics, s, e, res, {"job_id": job_id})
    return _list(s, e, res, series)


@router.get("/disk-usage", response_model=DiskUsageList)
def disk_usage(
    ctx: CtxDep,
    caller: CallerDep,
    node: str | None = None,
    path: str | None = None,
    user: str | None = None,
) -> DiskUsageList:
    """Per-user disk usage of the paths agents scan (`corral agent --disk-usage PATH`),
    from each node's latest completed scan, largest first."""
    rows = [
        NodeDiskUsage(
            node=name,
            path=u.path,
            user=u.user,
            used_bytes=u.used_bytes,
            files=u.files,
            scanned_at=u.scanned_at,
        )
        for name, latest in ctx.metrics.latest().items()
        for u in latest.disk_usage
        if (node is None or name == node)
        and (path is None or u.path == path)
        and (user is None or u.user == user)
    ]
    rows.sort(key=lambda r: (-r.used_bytes, r.node, r.path, r.user))
    return DiskUsageList(usage=rows)


prometheus_router = APIRouter(tags=["metrics"])


@prometheus_router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def prometheus(ctx: CtxDep, request: Request) -> PlainTextResponse:
    """Every GPU's newest sample with dcgm-exporter's names and labels, plus Corral's
    cluster series, for Prometheus to scrape. No token is needed unless the server runs
    with ``--metrics-require-token``."""
    if ctx.settings.metrics_require_token:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "this server requires a token for /metrics (bearer_token in Prometheus)"
            )
        with ctx.db.read() as s:
            auth.caller_for_token(s, token.strip())
    with ctx.db.read() as s:
        now = monitoring.cluster_now(s, ctx.metrics, ctx.clock.now())
    text = render(now, dict(ctx.scheduling.shares), ctx.metrics.last_xids())
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
