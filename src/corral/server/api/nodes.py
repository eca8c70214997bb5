"""Nodes as users see them."""

from __future__ import annotations

from fastapi import APIRouter

from corral.core import schemas
from corral.server.api.deps import CallerDep, CtxDep
from corral.server.services import nodes as node_service

router = APIRouter(tags=["nodes"])


@router.get("/nodes", response_model=schemas.NodeList)
def list_nodes(ctx: CtxDep, caller: CallerDep) -> schemas.NodeList:
    with ctx.db.read() as s:
        return schemas.NodeList(nodes=node_service.list_nodes(s))


@router.get("/nodes/{name}", response_model=schemas.NodeOut)
def get_node(ctx: CtxDep, caller: CallerDep, name: str) -> schemas.NodeOut:
    with ctx.db.read() as s:
        return node_service.node_out(s, node_service.get_node(s, name))
