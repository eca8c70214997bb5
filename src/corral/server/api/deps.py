"""Dependencies shared by the routers: the context, the caller, the node."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from corral.core.errors import Unauthorized
from corral.core.states import Role
from corral.server.context import ServerContext
from corral.server.services import auth
from corral.server.services.accounts import Caller


def get_ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[ServerContext, Depends(get_ctx)]


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing token: log in with `corral login` or set CORRAL_TOKEN")
    return token.strip()


TokenDep = Annotated[str, Depends(bearer_token)]


def current_user(ctx: CtxDep, token: TokenDep) -> Caller:
    with ctx.db.tx() as s:
        user = auth.user_for_token(s, token)
        return Caller(id=user.id, name=user.name, role=Role(user.role))


CallerDep = Annotated[Caller, Depends(current_user)]


def current_node_id(ctx: CtxDep, token: TokenDep) -> int:
    with ctx.db.tx() as s:
        return auth.node_for_token(s, token).id


NodeIdDep = Annotated[int, Depends(current_node_id)]
