"""Interactive sessions (docs/interactive.md): a user's terminal and port-stream
WebSockets, and the agents' tunnel long poll and dial-back WebSocket.

Users authenticate with their API token in the ``Authorization`` header (never the
dashboard's cookie: these sessions run commands); only the job's owner and admins are
let in. A refusal comes back as a plain HTTP error answer to the WebSocket handshake
(401, 403, 404, 409), with the usual JSON error body.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Path, Request
from pydantic import ValidationError
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from corral.core.errors import CorralError, NotFound, Unauthorized
from corral.core.states import Role
from corral.core.tunnel import MAX_PORT, TerminalStart, TunnelOffers, TunnelPoll
from corral.server.api.deps import SESSION_COOKIE, CtxDep, NodeIdDep
from corral.server.api.errors import error_response
from corral.server.context import ServerContext
from corral.server.services import auth
from corral.server.services import interactive as sessions
from corral.server.services import jobs as job_service
from corral.server.services.accounts import Caller
from corral.server.services.interactive import SessionTarget
from corral.server.tunnels import TunnelTimeout, fail, relay

router = APIRouter(tags=["interactive"])

START_TIMEOUT_SECONDS = 10.0  # for a terminal's first message
MAX_TUNNEL_WAIT_SECONDS = 30.0  # an agent's tunnel long poll is held at most this long


# ---------------------------------------------------------------- authentication


def token_of(conn: HTTPConnection, *, cookie_ok: bool) -> str:
    """The caller's token: ``Authorization: Bearer``, else (``cookie_ok``) the
    dashboard's session cookie. Raises `Unauthorized`."""
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if cookie_ok and conn.cookies.get(SESSION_COOKIE):
        return conn.cookies[SESSION_COOKIE]
    raise Unauthorized("missing token: log in with `corral login` or set CORRAL_TOKEN")


def caller_of(ctx: ServerContext, token: str) -> Caller:
    with ctx.db.read() as s:
        user_id, name, role = auth.caller_for_token(s, token)
    return Caller(id=user_id, name=name, role=Role(role))


async def deny(ws: WebSocket, exc: CorralError) -> None:
    """Refuse a WebSocket before accepting it: an HTTP error answer with the usual body
    (or, where the server cannot send one, a close with the message as its reason)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    response = error_response(exc.http_status, exc.code, exc.message, exc.field, headers)
    try:
        await ws.send_denial_response(response)
    except RuntimeError:  # no "websocket.http.response" extension
        await ws.close(1008, exc.message[:120])


def ctx_of(conn: HTTPConnection) -> ServerContext:
    ctx: ServerContext = conn.app.state.ctx
    return ctx


# ---------------------------------------------------------------- users


def _target(
    ctx: ServerContext, token: str, project: str, name: str, rank: int, what: str
) -> tuple[Caller, SessionTarget]:
    caller = caller_of(ctx, token)
    with ctx.db.read() as s:
        job = job_service.find_job(s, project, name)
        return caller, sessions.session_target(s, caller, job, rank=rank, what=what)


def _note(ctx: ServerContext, target: SessionTarget, caller: Caller, message: str) -> None:
    with ctx.db.tx(low_priority=True) as s:
        sessions.note_session(s, target.job_id, caller, message, ctx.clock.now())


async def _accept(
    websocket: WebSocket, project: str, name: str, rank: int, what: str
) -> tuple[Caller, SessionTarget] | None:
    """Accept the user's WebSocket if its token may ``what`` in the job's worker
    ``rank``; else refuse it with the reason (and None)."""
    try:
        token = token_of(websocket, cookie_ok=False)
        allowed = await asyncio.to_thread(
            _target, ctx_of(websocket), token, project, name, rank, what
        )
    except CorralError as exc:
        await deny(websocket, exc)
        return None
    await websocket.accept()
    return allowed


@router.websocket("/jobs/{project}/{name}/terminal")
async def terminal(websocket: WebSocket, project: str, name: str, rank: int = 0) -> None:
    """A terminal in a running job (``corral bash``/``exec``). The first message is a
    `TerminalStart`; then the frames of `corral.core.tunnel`."""
    ctx = ctx_of(websocket)
    allowed = await _accept(websocket, project, name, rank, "open a terminal")
    if allowed is None:
        return
    caller, target = allowed
    try:
        text = await asyncio.wait_for(websocket.receive_text(), START_TIMEOUT_SECONDS)
        start = TerminalStart.model_validate_json(text)
    except TimeoutError:
        await fail(websocket, f"no start message came within {START_TIMEOUT_SECONDS:g} s")
        return
    except (ValidationError, RuntimeError, KeyError) as exc:
        await fail(websocket, f"the first message must be a valid start message ({exc})")
        return
    what = "a shell" if start.command is None else " ".join(start.command)[:200]
    await asyncio.to_thread(_note, ctx, target, caller, f"{caller.name} opened a terminal: {what}")
    await _serve(ctx, websocket, target, caller, kind="terminal", start=start)


@router.websocket("/jobs/{project}/{name}/ports/{port}")
async def port_stream(
    websocket: WebSocket,
    project: str,
    name: str,
    port: int = Path(ge=1, le=MAX_PORT),
    rank: int = 0,
    check: bool = False,
) -> None:
    """One TCP connection to a port of a running job (``corral port-forward``): the
    stream's bytes as binary messages, ``eof``/``error`` as control messages. With
    ``check``, only the access and the job's state are checked (then closed)."""
    ctx = ctx_of(websocket)
    allowed = await _accept(websocket, project, name, rank, "forward a port")
    if allowed is None:
        return
    caller, target = allowed
    if check:
        await websocket.close()
        return
    await _serve(ctx, websocket, target, caller, kind="port", port=port)


async def _serve(
    ctx: ServerContext,
    user: WebSocket,
    target: SessionTarget,
    caller: Caller,
    *,
    kind: str,
    start: TerminalStart | None = None,
    port: int | None = None,
) -> None:
    hub = ctx.tunnels
    t = hub.open(
        target.node_id,
        target.node_name,
        kind=kind,
        job_id=target.job_id,
        attempt=target.attempt,
        rank=target.rank,
        user=caller.name,
        start=start,
        port=port,
    )
    try:
        try:
            agent = await hub.connect(t)
        except TunnelTimeout as exc:
            await fail(user, str(exc))
            return
        await relay(user, agent)
    finally:
        hub.close(t)


# ---------------------------------------------------------------- agents


@router.post("/agent/tunnels", response_model=TunnelOffers)
async def agent_tunnels(
    ctx: CtxDep, node_id: NodeIdDep, request: Request, body: TunnelPoll
) -> TunnelOffers:
    """Sessions this node's agent is to serve, held up to ``wait_seconds`` (≤ 30 s)
    until one comes. Each is handed out once."""
    wait = min(body.wait_seconds, MAX_TUNNEL_WAIT_SECONDS)

    async def hangup() -> None:  # the body is read: what comes next is the disconnect
        while (await request.receive())["type"] != "http.disconnect":
            pass

    offers = await ctx.tunnels.offers(node_id, wait, hangup=hangup)
    return TunnelOffers(tunnels=offers)


def _node_id(ctx: ServerContext, token: str) -> int:
    with ctx.db.read() as s:
        return auth.node_id_for_token(s, token)


@router.websocket("/agent/tunnels/{tunnel_id}")
async def agent_dial(websocket: WebSocket, tunnel_id: str) -> None:
    """An agent's side of session ``tunnel_id``, dialed back with its node token."""
    ctx = ctx_of(websocket)
    try:
        token = token_of(websocket, cookie_ok=False)
        node_id = await asyncio.to_thread(_node_id, ctx, token)
    except CorralError as exc:
        await deny(websocket, exc)
        return
    t = ctx.tunnels.claim(tunnel_id, node_id)
    if t is None:
        await deny(websocket, NotFound("no such session waits for this node (it timed out?)"))
        return
    await websocket.accept()
    ctx.tunnels.attach(t, websocket)
    await t.finished.wait()  # the user's side relays; this keeps the connection open
