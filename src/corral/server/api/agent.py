"""The agents' side of the API: register, sync (heartbeat + long poll), log upload,
metrics.

Agents dial out to these; the server never connects to a node.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session, lazyload

from corral.core import schemas
from corral.core.errors import Unauthorized
from corral.core.telemetry import MetricsBatch
from corral.server.api.deps import CtxDep, NodeIdDep, TokenDep
from corral.server.api.responses import model_response
from corral.server.context import ServerContext
from corral.server.metrics.hub import unmanaged_of
from corral.server.services import auth, monitoring
from corral.server.services import nodes as node_service
from corral.store.models import Job, JobWorker, Node

router = APIRouter(prefix="/agent", tags=["agent"])


@router.post("/register", response_model=schemas.RegisterResponse)
def register(ctx: CtxDep, token: TokenDep, body: schemas.NodeInventory) -> schemas.RegisterResponse:
    """Register (or re-register) a node with a join token, or with the node's own token."""
    now = ctx.clock.now()
    with ctx.db.tx() as s:
        if token.startswith(auth.NODE_PREFIX):
            node, node_token = node_service.register(
                s, body, now, node_token_of=auth.node_for_token(s, token)
            )
        else:
            auth.check_join_token(s, token, now)
            node, node_token = node_service.register(s, body, now, node_token_of=None)
        node_id = node.id
    ctx.signals.nodes_changed([node_id])
    ctx.signals.wake_scheduler()
    return schemas.RegisterResponse(
        node=body.name, node_token=node_token, sync_wait_seconds=ctx.settings.heartbeat_period()
    )


# A sync rewrites the node's last_heartbeat at most this often. Under load a node's long
# poll returns (and is re-sent) whenever its desired state changes, and its reports come
# many times a second; liveness is judged in tens of seconds.
HEARTBEAT_WRITE_SECONDS = 1.0


def _node(s: Session, node_id: int) -> Node:
    # Its GPUs (selectin by default) are loaded only if the desired state is built.
    node = s.get(Node, node_id, options=[lazyload(Node.gpus)])
    if node is None:
        raise Unauthorized("this node was removed: re-join it with a join token")
    return node


def _apply(
    ctx: ServerContext, node_id: int, req: schemas.SyncRequest, *, may_wait: bool
) -> tuple[int, schemas.SyncResponse | None]:
    """Record the heartbeat and apply the reports. Returns the node's generation, and
    its desired state (read in the same transaction) unless the request is to wait for
    a newer one."""
    now = ctx.clock.now()

    def answer(s: Session, node: Node) -> schemas.SyncResponse | None:
        if may_wait and node.generation <= req.generation_seen:
            return None
        return node_service.desired_state(s, node, now)

    if not req.reports:
        with ctx.db.read() as s:
            node = _node(s, node_id)
            if not node_service.heartbeat_due(node, now, HEARTBEAT_WRITE_SECONDS):
                return node.generation, answer(s, node)
    with ctx.db.tx() as s:
        node = _node(s, node_id)
        if node_service.heartbeat_due(node, now, HEARTBEAT_WRITE_SECONDS):
            node_service.heartbeat(s, node, now)
        freed, changed = node_service.apply_reports(s, node, req.reports, now)
        result = node.generation, answer(s, node)
    if changed:
        ctx.signals.nodes_changed(changed)
    if freed:
        ctx.signals.wake_scheduler(now=True)
    return result


def _desired(ctx: ServerContext, node_id: int) -> schemas.SyncResponse:
    with ctx.db.read() as s:
        return node_service.desired_state(s, _node(s, node_id), ctx.clock.now())


@router.post("/sync", response_model=schemas.SyncResponse)
async def sync(ctx: CtxDep, node_id: NodeIdDep, body: schemas.SyncRequest) -> Response:
    """Heartbeat + reports in, full desired state out; held up to ``wait_seconds``."""
    changed = ctx.signals.node_event(node_id)  # taken before reading: no lost wake-up
    wait = min(body.wait_seconds, ctx.settings.heartbeat_period())
    may_wait = wait > 0 and not body.reports
    _, answer = await asyncio.to_thread(_apply, ctx, node_id, body, may_wait=may_wait)
    if answer is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout=wait)
        answer = await asyncio.to_thread(_desired, ctx, node_id)
    return model_response(answer)


def _store_log(
    ctx: ServerContext,
    node_id: int,
    job_id: int,
    attempt: int,
    offset: int,
    data: bytes,
    rank: int = 0,
) -> int:
    """Store a chunk of a worker's output, if the calling node runs that worker: rank 0
    on the job's own node, a gang's other workers on the node of their `JobWorker` row."""
    with ctx.db.read() as s:
        job = s.get(Job, job_id)
        if job is None or attempt > job.attempt or attempt < 1:
            raise Unauthorized("this node does not run that job attempt")
        if rank == 0:
            runs_it = job.node_id == node_id
        else:
            worker = s.get(JobWorker, (job_id, rank))
            runs_it = worker is not None and worker.node_id == node_id
        if not runs_it:
            which = "that job attempt" if rank == 0 else f"worker {rank} of that job attempt"
            raise Unauthorized(f"this node does not run {which}")
    return ctx.logs.append(job_id, attempt, offset, data, rank=rank)


@router.put("/jobs/{job_id}/attempts/{attempt}/log", response_model=schemas.LogAck)
async def upload_log(
    ctx: CtxDep,
    node_id: NodeIdDep,
    request: Request,
    job_id: int,
    attempt: int,
    offset: int = Query(ge=0),
    rank: int = Query(
        0, ge=0, lt=schemas.MAX_WORKERS, description="Which worker of a gang (0 for other jobs)."
    ),
) -> schemas.LogAck:
    data = await request.body()
    next_offset = await asyncio.to_thread(
        _store_log, ctx, node_id, job_id, attempt, offset, data, rank
    )
    return schemas.LogAck(next_offset=next_offset)


def _ingest_metrics(ctx: ServerContext, node_id: int, batch: MetricsBatch) -> None:
    now = ctx.clock.now()
    with ctx.db.read() as s:
        node = s.get(Node, node_id)
        if node is None:
            raise Unauthorized("this node was removed: re-join it with a join token")
        name = node.name
        known = monitoring.unmanaged_now(s, node)
    latest = ctx.metrics.ingest(name, batch, now)
    seen = unmanaged_of(latest.sample) if latest is not None else ({}, {})
    differs = any(known[0].get(i) != who for i, who in seen[0].items()) or any(
        known[1].get(u) != who for u, who in seen[1].items() if u in known[1]
    )
    if not differs and not batch.xid_events:
        return
    with ctx.db.tx(low_priority=True) as s:
        node = s.get(Node, node_id)
        if node is None:
            return
        for event in batch.xid_events:
            node_service.node_event(
                s,
                node,
                "xid",
                f"XID {event.xid} on GPU {event.gpu_index} ({event.uuid})"
                + (f": {event.message}" if event.message else ""),
                event.at,
            )
        changed = differs and monitoring.apply_unmanaged(s, node, seen[0], seen[1], now)
    if changed:
        ctx.signals.wake_scheduler()


@router.post("/metrics", status_code=204)
async def upload_metrics(ctx: CtxDep, node_id: NodeIdDep, body: MetricsBatch) -> Response:
    """Samples, XID events and disk usage since the agent's last batch."""
    await asyncio.to_thread(_ingest_metrics, ctx, node_id, body)
    return Response(status_code=204)
