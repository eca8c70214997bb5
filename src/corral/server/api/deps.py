"""Dependencies shared by the routers: the context, the caller, the node."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from corral.core.errors import Unauthorized
from corral.core.states import Role
from corral.server.context import ServerContext
from corral.server.services import auth
from corral.server.services.accounts import Caller

# The dependencies that do no I/O are ``async``: FastAPI runs plain ``def`` dependencies
# in its thread pool, and a hop to a thread and back costs more than they do.


async def get_ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[ServerContext, Depends(get_ctx)]


# The dashboard's session cookie holds the user's API token (HttpOnly, SameSite=Strict).
SESSION_COOKIE = "corral_session"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def bearer_token(request: Request) -> str:
    """The caller's token: the ``Authorization: Bearer`` header, or, for reads only, the
    dashboard's session cookie (so its charts can call the API; a cookie never
    authorizes a change, which keeps cross-site request forgery out)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if cookie and request.method in _SAFE_METHODS:
        return cookie
    raise Unauthorized("missing token: log in with `corral login` or set CORRAL_TOKEN")


TokenDep = Annotated[str, Depends(bearer_token)]


def current_user(ctx: CtxDep, token: TokenDep) -> Caller:
    with ctx.db.read() as s:
        user_id, name, role = auth.caller_for_token(s, token)
    return Caller(id=user_id, name=name, role=Role(role))


CallerDep = Annotated[Caller, Depends(current_user)]


def current_node_id(ctx: CtxDep, token: TokenDep) -> int:
    with ctx.db.read() as s:
        return auth.node_id_for_token(s, token)


NodeIdDep = Annotated[int, Depends(current_node_id)]
