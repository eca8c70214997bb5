"""The agents' side of the API: register, sync (heartbeat + long poll), log upload.

Agents dial out to these; the server never connects to a node.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Query, Request

from corral.core import schemas
from corral.core.errors import Unauthorized
from corral.server.api.deps import CtxDep, NodeIdDep, TokenDep
from corral.server.context import ServerContext
from corral.server.services import auth
from corral.server.services import nodes as node_service
from corral.store.models import Job, Node

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
        node=body.name, node_token=node_token, sync_wait_seconds=ctx.settings.sync_wait
    )


def _apply(ctx: ServerContext, node_id: int, req: schemas.SyncRequest) -> int:
    now = ctx.clock.now()
    with ctx.db.tx() as s:
        node = s.get(Node, node_id)
        if node is None:
            raise Unauthorized("this node was removed: re-join it with a join token")
        node_service.heartbeat(s, node, now)
        freed = node_service.apply_reports(s, node, req.reports, now)
        generation = node.generation
    if freed:
        ctx.signals.wake_scheduler()
    return generation


def _desired(ctx: ServerContext, node_id: int) -> schemas.SyncResponse:
    with ctx.db.tx() as s:
        node = s.get(Node, node_id)
        assert node is not None
        return node_service.desired_state(s, node, ctx.clock.now())


@router.post("/sync", response_model=schemas.SyncResponse)
async def sync(ctx: CtxDep, node_id: NodeIdDep, body: schemas.SyncRequest) -> schemas.SyncResponse:
    """Heartbeat + reports in, full desired state out; held up to ``wait_seconds``."""
    changed = ctx.signals.node_event(node_id)  # taken before reading: no lost wake-up
    generation = await asyncio.to_thread(_apply, ctx, node_id, body)
    if body.wait_seconds > 0 and not body.reports and generation <= body.generation_seen:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout=body.wait_seconds)
    return await asyncio.to_thread(_desired, ctx, node_id)


def _store_log(
    ctx: ServerContext, node_id: int, job_id: int, attempt: int, offset: int, data: bytes
) -> int:
    with ctx.db.tx() as s:
        job = s.get(Job, job_id)
        if job is None or job.node_id != node_id or attempt > job.attempt or attempt < 1:
            raise Unauthorized("this node does not run that job attempt")
    return ctx.logs.append(job_id, attempt, offset, data)


@router.put("/jobs/{job_id}/attempts/{attempt}/log", response_model=schemas.LogAck)
async def upload_log(
    ctx: CtxDep,
    node_id: NodeIdDep,
    request: Request,
    job_id: int,
    attempt: int,
    offset: int = Query(ge=0),
) -> schemas.LogAck:
    data = await request.body()
    next_offset = await asyncio.to_thread(_store_log, ctx, node_id, job_id, attempt, offset, data)
    return schemas.LogAck(next_offset=next_offset)
