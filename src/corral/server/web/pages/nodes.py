"""The nodes table and each node's page: inventory, GPUs and who holds them, MIG layout,
processes, host numbers, charts and recent events.

Driver and CUDA versions are compared across nodes as ``corral nodes`` does: a version
rarer than the most common one is flagged ("drift").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.core.states import NodeState
from corral.core.telemetry import GpuNow, GpuProcess, HostSample, NodeNow
from corral.server.api.deps import CtxDep
from corral.server.context import ServerContext
from corral.server.services import monitoring
from corral.server.services.nodes import HOLDING_STATES
from corral.server.web.core import PageCaller, render
from corral.store.models import Gpu, Job, MigInstance, Node, NodeEvent, Project, User

router = APIRouter()

STALE_AFTER = 30.0  # seconds: an older newest sample is not "now"
EVENTS_SHOWN = 50
UNHEALTHY = (NodeState.NOT_READY.value, NodeState.DOWN.value)


# ------------------------------------------------------------------ version drift


def most_common(values: Sequence[str | None]) -> tuple[str, int, int] | None:
    """The version most nodes report, how many report it, how many report any."""
    known = [v for v in values if v]
    if not known:
        return None
    version, count = Counter(known).most_common(1)[0]
    return version, count, len(known)


def drift(value: str | None, values: Sequence[str | None]) -> str | None:
    """``differs from 550.54.15 on 7 of 8 nodes`` when ``value`` is rarer than the most
    common of ``values``; None when it is as common (a tie is no majority) or unknown.
    (The rule of `corral nodes`.)"""
    common = most_common(values)
    if not value or common is None:
        return None
    version, count, total = common
    if value == version or sum(1 for v in values if v == value) >= count:
        return None
    return f"differs from {version} on {count} of {total} nodes"


# ------------------------------------------------------------------ the nodes table


@dataclass(frozen=True)
class NodeRow:
    name: str
    state: str
    reason: str | None
    pool: str
    simulated: bool
    last_heartbeat: datetime | None
    gpus: int
    models: str
    allocated: int
    free: int
    unmanaged: int
    utilization_percent: float | None
    cpu_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    driver: str | None
    driver_drift: str | None
    cuda: str | None
    cuda_drift: str | None
    sampled_at: datetime | None
    stale: bool


def is_fresh(node: NodeNow, now: datetime) -> bool:
    """Whether the node's newest sample is recent enough to show as "now"."""
    at = node.sampled_at
    if at is None:
        return False
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
    return (now - at).total_seconds() <= STALE_AFTER


def _mean_util(gpus: Sequence[GpuNow]) -> float | None:
    utils = [
        g.sample.utilization_percent
        for g in gpus
        if g.sample is not None and g.sample.utilization_percent is not None
    ]
    return sum(utils) / len(utils) if utils else None


def _node_rows(session: Session, now: datetime, live: Sequence[NodeNow]) -> list[NodeRow]:
    info = {
        r.name: r
        for r in session.execute(
            select(Node.name, Node.reason, Node.driver_version, Node.cuda_version)
        )
    }
    simulated_gpus = set(
        session.scalars(
            select(Node.name).join(Gpu, Gpu.node_id == Node.id).where(Gpu.simulated).distinct()
        )
    )
    drivers = [r.driver_version for r in info.values()]
    cudas = [r.cuda_version for r in info.values()]
    rows = []
    for n in live:
        extra = info.get(n.name)
        driver = extra.driver_version if extra else None
        cuda = extra.cuda_version if extra else None
        unmanaged = sum(1 for g in n.gpus if g.unmanaged)
        allocated = sum(1 for g in n.gpus if g.jobs and not g.unmanaged)
        free = (
            sum(1 for g in n.gpus if not g.jobs and not g.unmanaged)
            if n.state == NodeState.READY.value
            else 0
        )
        fresh = is_fresh(n, now)
        host = n.host if fresh else None
        rows.append(
            NodeRow(
                name=n.name,
                state=n.state,
                reason=extra.reason if extra else None,
                pool=n.pool,
                simulated=n.simulated or n.name in simulated_gpus,
                last_heartbeat=n.last_heartbeat,
                gpus=len(n.gpus),
                models=", ".join(dict.fromkeys(g.model for g in n.gpus)),
                allocated=allocated,
                free=free,
                unmanaged=unmanaged,
                utilization_percent=_mean_util(n.gpus) if fresh else None,
                cpu_percent=host.cpu_percent if host else None,
                memory_used_bytes=host.memory_used_bytes if host else None,
                memory_total_bytes=host.memory_total_bytes if host else None,
                driver=driver,
                driver_drift=drift(driver, drivers),
                cuda=cuda,
                cuda_drift=drift(cuda, cudas),
                sampled_at=n.sampled_at,
                stale=n.sampled_at is not None and not fresh,
            )
        )
    return rows


def nodes_context(ctx: ServerContext) -> dict[str, Any]:
    at = ctx.clock.now()
    with ctx.db.read() as s:
        cluster = monitoring.cluster_now(s, ctx.metrics, at)
        rows = _node_rows(s, at, cluster.nodes)
    return {"rows": rows, "now": at, "unhealthy": UNHEALTHY}


@router.get("/nodes", response_class=HTMLResponse)
def nodes_page(ctx: CtxDep, caller: PageCaller, request: Request) -> HTMLResponse:
    return render(request, "nodes.html", caller, **nodes_context(ctx))


@router.get("/fragments/nodes", response_class=HTMLResponse)
def nodes_fragment(ctx: CtxDep, caller: PageCaller, request: Request) -> HTMLResponse:
    return render(request, "nodes_table.html", caller, **nodes_context(ctx))


# ------------------------------------------------------------------ one node


@dataclass(frozen=True)
class JobLink:
    id: int
    name: str
    project: str
    user: str


@dataclass(frozen=True)
class ProcessRow:
    gpu: int
    mig: str | None  # the MIG instance's profile (and UUID in the title)
    mig_uuid: str | None
    process: GpuProcess
    job: JobLink | None  # the Corral job it belongs to (owner "job")

    @property
    def managed(self) -> bool:
        return self.process.managed


@dataclass(frozen=True)
class MigRow:
    gpu: int
    uuid: str
    profile: str
    compute_slices: int
    memory_bytes: int
    memory_used_bytes: int | None
    holder: JobLink | None
    unmanaged: str | None
    processes: int


@dataclass
class NodeView:
    """Everything the node page shows, read in one transaction."""

    name: str
    state: str
    reason: str | None
    pool: str
    hostname: str
    address: str | None
    cpu_cores: int
    memory_bytes: int
    driver: str | None
    driver_drift: str | None
    cuda: str | None
    cuda_drift: str | None
    simulated: bool
    gpu_backend: str
    container_engine: str | None
    agent_version: str
    registered_at: datetime
    last_heartbeat: datetime | None
    state_changed_at: datetime
    live: NodeNow
    fresh: bool
    simulated_gpus: set[int] = field(default_factory=set)
    mig: dict[int, list[MigRow]] = field(default_factory=dict)
    processes: list[ProcessRow] = field(default_factory=list)
    events: list[tuple[datetime, str, str]] = field(default_factory=list)

    @property
    def host(self) -> HostSample | None:
        return self.live.host

    @property
    def mean_utilization(self) -> float | None:
        return _mean_util(self.live.gpus) if self.fresh else None


def _job_links(session: Session, ids: set[int]) -> dict[int, JobLink]:
    if not ids:
        return {}
    return {
        r.id: JobLink(r.id, r.name, r.project, r.user)
        for r in session.execute(
            select(Job.id, Job.name, Project.name.label("project"), User.name.label("user"))
            .join(Project, Project.id == Job.project_id)
            .join(User, User.id == Job.user_id)
            .where(Job.id.in_(sorted(ids)))
        )
    }


def node_view(session: Session, ctx: ServerContext, name: str) -> NodeView | None:
    node = session.scalar(select(Node).where(Node.name == name))
    if node is None:
        return None
    at = ctx.clock.now()
    live = next(
        (n for n in monitoring.cluster_now(session, ctx.metrics, at).nodes if n.name == name),
        None,
    )
    if live is None:  # not possible in one transaction, but never a 500
        return None
    peers = session.execute(select(Node.driver_version, Node.cuda_version)).all()
    drivers = [p.driver_version for p in peers]
    cudas = [p.cuda_version for p in peers]
    view = NodeView(
        name=node.name,
        state=node.state,
        reason=node.reason,
        pool=node.pool,
        hostname=node.hostname,
        address=node.address,
        cpu_cores=node.cpu_cores,
        memory_bytes=node.memory_bytes,
        driver=node.driver_version,
        driver_drift=drift(node.driver_version, drivers),
        cuda=node.cuda_version,
        cuda_drift=drift(node.cuda_version, cudas),
        simulated=node.simulated or any(g.simulated for g in node.gpus),
        gpu_backend=node.gpu_backend,
        container_engine=node.container_engine,
        agent_version=node.agent_version,
        registered_at=node.registered_at,
        last_heartbeat=node.last_heartbeat,
        state_changed_at=node.state_changed_at,
        live=live,
        fresh=is_fresh(live, at),
        simulated_gpus={g.index for g in node.gpus if g.simulated},
    )
    # The newest sample's processes and MIG use, when it is recent (else: n/a).
    samples = {g.index: g.sample for g in live.gpus if g.sample is not None and view.fresh}
    # The jobs the processes belong to (one query).
    wanted: set[int] = set()
    for sample in samples.values():
        for p in [*sample.processes, *(q for m in sample.mig for q in m.processes)]:
            if p.job_id is not None:
                wanted.add(p.job_id)
    # Who holds each MIG instance (one query).
    mig_holders: dict[str, int] = {
        uuid: job_id
        for uuid, job_id in session.execute(
            select(Job.mig_uuid, Job.id).where(
                Job.node_id == node.id,
                Job.mig_uuid.is_not(None),
                Job.state.in_(HOLDING_STATES),
            )
        )
        if uuid is not None
    }
    jobs = _job_links(session, wanted | set(mig_holders.values()))
    for index, sample in sorted(samples.items()):
        for p in sample.processes:
            job = jobs.get(p.job_id) if p.job_id is not None and p.managed else None
            view.processes.append(ProcessRow(index, None, None, p, job))
        for m in sample.mig:
            for p in m.processes:
                job = jobs.get(p.job_id) if p.job_id is not None and p.managed else None
                view.processes.append(ProcessRow(index, m.profile, m.uuid, p, job))
    mig_samples = {m.uuid: m for s in samples.values() for m in s.mig}
    for row in session.scalars(
        select(MigInstance)
        .where(MigInstance.node_id == node.id)
        .order_by(MigInstance.gpu_index, MigInstance.gpu_instance_id, MigInstance.uuid)
    ):
        ms = mig_samples.get(row.uuid)
        holder = mig_holders.get(row.uuid)
        view.mig.setdefault(row.gpu_index, []).append(
            MigRow(
                gpu=row.gpu_index,
                uuid=row.uuid,
                profile=row.profile,
                compute_slices=row.compute_slices,
                memory_bytes=row.memory_bytes,
                memory_used_bytes=ms.memory_used_bytes if ms and view.fresh else None,
                holder=jobs.get(holder) if holder is not None else None,
                unmanaged=row.unmanaged,
                processes=len(ms.processes) if ms and view.fresh else 0,
            )
        )
    view.events = [
        (e.at, e.type, e.message)
        for e in session.scalars(
            select(NodeEvent)
            .where(NodeEvent.node_id == node.id)
            .order_by(NodeEvent.at.desc(), NodeEvent.id.desc())
            .limit(EVENTS_SHOWN)
        )
    ]
    return view


GPU_CHARTS = (
    # metric, title, unit, max, scale
    ("utilization_percent", "GPU utilization", "%", "100", None),
    ("memory_used_bytes", "GPU memory used", " GiB", None, str(1024**3)),
    ("temperature_celsius", "GPU temperature", " °C", None, None),
    ("power_watts", "GPU power", " W", None, None),
)
HOST_CHARTS = (
    ("cpu_percent", "CPU", "%", "100", None),
    ("memory_used_bytes", "Memory used", " GiB", None, str(1024**3)),
)


def _node_context(ctx: ServerContext, name: str) -> dict[str, Any] | None:
    with ctx.db.read() as s:
        view = node_view(s, ctx, name)
    if view is None:
        return None
    return {
        "n": view,
        "now": ctx.clock.now(),
        "unhealthy": UNHEALTHY,
        "gpu_charts": GPU_CHARTS,
        "host_charts": HOST_CHARTS,
    }


def _missing(request: Request, caller: Any, name: str) -> HTMLResponse:
    page = render(request, "node_missing.html", caller, name=name)
    page.status_code = 404
    return page


@router.get("/nodes/{name}", response_class=HTMLResponse)
def node_page(ctx: CtxDep, caller: PageCaller, request: Request, name: str) -> HTMLResponse:
    context = _node_context(ctx, name)
    if context is None:
        return _missing(request, caller, name)
    return render(request, "node.html", caller, **context)


@router.get("/fragments/nodes/{name}", response_class=HTMLResponse)
def node_fragment(ctx: CtxDep, caller: PageCaller, request: Request, name: str) -> HTMLResponse:
    context = _node_context(ctx, name)
    if context is None:
        return _missing(request, caller, name)
    return render(request, "node_live.html", caller, **context)
