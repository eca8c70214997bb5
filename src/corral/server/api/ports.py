"""The port URLs: ``/jobs/{id}/ports/{port}/...`` reverse-proxied to TCP ``port`` of a
running job (on its node's 127.0.0.1), through the agent's tunnel (docs/interactive.md).

HTTP requests and WebSocket upgrades (Jupyter's kernels) both work. The job's program
sees the full path, prefix included, so it must be told its base URL (Jupyter:
``--ServerApp.base_url=/jobs/42/ports/8888/``); ``X-Forwarded-Prefix`` carries it too.

Who may: the job's owner and admins, with an API token (``Authorization: Bearer``) or
the dashboard's session cookie. Neither ever reaches the job: the server's own
credentials are removed from what is forwarded. Each HTTP request is one session
through the agent (no connection reuse).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpcore
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as BackendResponse
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from corral.core.errors import Conflict, CorralError, NotFound
from corral.core.tunnel import port_path
from corral.server.api.deps import SESSION_COOKIE
from corral.server.api.errors import error_response
from corral.server.api.interactive import caller_of, ctx_of, deny, token_of
from corral.server.context import ServerContext
from corral.server.services import interactive as sessions
from corral.server.services.accounts import Caller
from corral.server.services.interactive import SessionTarget
from corral.server.tunnels import TunnelStream, TunnelTimeout, close_quietly, until_either_ends

router = APIRouter(include_in_schema=False)

PROXY_PATH = "/jobs/{job_id}/ports/{port}/{path:path}"
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Headers that describe one hop, not the message (RFC 9110 §7.6.1), and never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_WS_OWN = frozenset(  # made anew for the job's side of a WebSocket
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"}
)
_READ_BYTES = 64 * 1024
# A job's page shares the dashboard's origin. Shown to anyone but the job's owner (an
# admin), it runs sandboxed: scripts run, but in an opaque origin of their own, so they
# cannot read the dashboard or the API with that viewer's session cookie. The owner's
# own page runs as it is (Jupyter needs its origin's storage): it can reach no more
# than its owner can.
SANDBOX_POLICY = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"


def _port_target(
    ctx: ServerContext, token: str, job_id: int, port: int
) -> tuple[Caller, SessionTarget]:
    caller = caller_of(ctx, token)
    with ctx.db.read() as s:
        job = sessions.find_job_by_id(s, job_id)
        target = sessions.session_target(s, caller, job, rank=0, what="reach a port")
    if port not in target.ports:
        shown = ", ".join(map(str, target.ports)) or "none"
        raise NotFound(
            f"job {target.job_name} does not expose port {port} (its ports: {shown}; submit "
            "it with --port, or use `corral port-forward`)"
        )
    return caller, target


def _authorize(
    conn: HTTPConnection, job_id: int, port: int
) -> Awaitable[tuple[Caller, SessionTarget]]:
    ctx = ctx_of(conn)
    token = token_of(conn, cookie_ok=True)
    return asyncio.to_thread(_port_target, ctx, token, job_id, port)


def forwarded_headers(conn: HTTPConnection, job_id: int, port: int) -> list[tuple[str, str]]:
    """The request's headers as the job gets them: no hop-by-hop headers, none of the
    server's credentials (its bearer token, its session cookie), plus X-Forwarded-*."""
    out: list[tuple[str, str]] = []
    for name, value in conn.headers.items():
        key = name.lower()
        if key in HOP_BY_HOP or key.startswith("x-forwarded-"):
            continue
        if key == "authorization" and value.lower().startswith("bearer "):
            continue  # Corral's token; a job's own scheme ("token …") passes
        if key == "cookie":
            value = strip_cookie(value, SESSION_COOKIE)
            if not value:
                continue
        out.append((name, value))
    client = conn.client.host if conn.client else ""
    out += [
        ("X-Forwarded-For", client),
        ("X-Forwarded-Proto", conn.url.scheme.replace("ws", "http")),
        ("X-Forwarded-Host", conn.headers.get("host", "")),
        ("X-Forwarded-Prefix", port_path(job_id, port).rstrip("/")),
    ]
    return out


def strip_cookie(header: str, name: str) -> str:
    """A ``Cookie`` header without cookie ``name``."""
    parts = [p.strip() for p in header.split(";")]
    return "; ".join(p for p in parts if p and p.split("=", 1)[0].strip() != name)


def _target_of(conn: HTTPConnection) -> bytes:
    """The request target as received (path still percent-encoded, and the query)."""
    raw = conn.scope.get("raw_path") or conn.url.path.encode()
    query = conn.scope.get("query_string", b"")
    return bytes(raw) + (b"?" + bytes(query) if query else b"")


class _TunnelBackend(httpcore.AsyncNetworkBackend):
    """httpcore's "network": every connection is a new session through the agent."""

    def __init__(self, opener: Callable[[], Awaitable[TunnelStream]]) -> None:
        self._opener = opener

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._opener()

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _opener(ctx: ServerContext, target: SessionTarget, caller: Caller, port: int) -> Any:
    async def open_stream() -> TunnelStream:
        hub = ctx.tunnels
        t = hub.open(
            target.node_id,
            target.node_name,
            kind="port",
            job_id=target.job_id,
            attempt=target.attempt,
            rank=0,
            user=caller.name,
            port=port,
        )
        try:
            agent = await hub.connect(t)
        except TunnelTimeout as exc:
            raise httpcore.ConnectError(str(exc)) from None
        return TunnelStream(hub, t, agent)

    return open_stream


def _error(exc: CorralError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return error_response(exc.http_status, exc.code, exc.message, exc.field, headers)


@router.api_route(PROXY_PATH, methods=_METHODS)
async def proxy(request: Request, job_id: int, port: int, path: str) -> Response:
    """Forward one HTTP request to the job's port and stream its answer back."""
    try:
        caller, target = await _authorize(request, job_id, port)
    except CorralError as exc:
        return _error(exc)
    headers = forwarded_headers(request, job_id, port)
    if request.headers.get("transfer-encoding", "").lower() == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    pool = httpcore.AsyncConnectionPool(
        network_backend=_TunnelBackend(_opener(ctx_of(request), target, caller, port)),
        max_connections=1,
        retries=0,
    )
    upstream = httpcore.Request(
        request.method,
        httpcore.URL(scheme=b"http", host=b"127.0.0.1", port=port, target=_target_of(request)),
        headers=headers,
        content=request.stream() if has_body else None,
    )
    try:
        response = await pool.handle_async_request(upstream)
    except httpcore.ConnectError as exc:
        await pool.aclose()
        return error_response(504, "unavailable", f"port {port} of job {target.job_name}: {exc}")
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException) as exc:
        await pool.aclose()
        return error_response(
            502, "unavailable", f"port {port} of job {target.job_name}: {exc or type(exc).__name__}"
        )

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_stream():
                yield chunk
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException):
            return  # the answer is cut short; the browser sees a truncated body
        finally:
            await response.aclose()
            await pool.aclose()

    answer = StreamingResponse(body(), status_code=response.status)
    answer.raw_headers = [
        (name.lower(), value)
        for name, value in response.headers
        if name.decode("latin-1").lower() not in HOP_BY_HOP
    ]
    if caller.id != target.owner_id:
        answer.raw_headers.append((b"content-security-policy", SANDBOX_POLICY.encode()))
    return answer


# ---------------------------------------------------------------- WebSockets


@router.websocket(PROXY_PATH)
async def proxy_websocket(websocket: WebSocket, job_id: int, port: int, path: str) -> None:
    """Forward a WebSocket to the job's port: a WebSocket handshake of our own with the
    job's program over the tunnel, then whole messages both ways."""
    ctx = ctx_of(websocket)
    try:
        caller, target = await _authorize(websocket, job_id, port)
    except CorralError as exc:
        await deny(websocket, exc)
        return
    try:
        stream = await _opener(ctx, target, caller, port)()
    except httpcore.ConnectError as exc:
        await deny(websocket, Conflict(str(exc)))
        return
    try:
        await _bridge(websocket, stream, port)
    finally:
        await stream.aclose()


async def _bridge(browser: WebSocket, stream: TunnelStream, port: int) -> None:
    offered = [
        Subprotocol(p.strip())
        for p in browser.headers.get("sec-websocket-protocol", "").split(",")
        if p.strip()
    ]
    target = _target_of(browser).decode("latin-1")
    protocol = ClientProtocol(
        parse_uri(f"ws://127.0.0.1:{port}{target}"), subprotocols=offered or None, max_size=None
    )
    request = protocol.connect()
    del request.headers["Host"]
    for name, value in forwarded_headers(browser, *_ids(browser)):
        if name.lower() not in _WS_OWN and name.lower() != "sec-websocket-protocol":
            request.headers[name] = value
    protocol.send_request(request)
    lock = asyncio.Lock()

    async def flush() -> None:
        async with lock:
            for data in protocol.data_to_send():
                if data:
                    await stream.write(data)

    await flush()
    try:
        response = await _handshake(protocol, stream)
    except httpcore.ReadError as exc:
        await browser.send_denial_response(error_response(502, "unavailable", str(exc)))
        return
    if response is None or protocol.handshake_exc is not None:
        status = response.status_code if response is not None else 502
        body = response.body if response is not None and response.body else b""
        await browser.send_denial_response(
            Response(body or b"the job's program refused the WebSocket", status_code=status)
        )
        return
    await browser.accept(subprotocol=response.headers.get("Sec-WebSocket-Protocol"))

    async def to_job() -> None:
        while True:
            message = await browser.receive()
            if message["type"] == "websocket.disconnect":
                protocol.send_close(1000)
                await flush()
                return
            if message.get("bytes") is not None:
                protocol.send_binary(message["bytes"])
            elif message.get("text") is not None:
                protocol.send_text(message["text"].encode())
            await flush()

    async def to_browser() -> None:
        parts: list[bytes] = []
        text = False
        while True:
            data = await _feed(protocol, stream)
            for event in protocol.events_received():
                if not isinstance(event, Frame):
                    continue
                if event.opcode is Opcode.CLOSE:
                    await flush()
                    return
                if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                    text, parts = event.opcode is Opcode.TEXT, [bytes(event.data)]
                elif event.opcode is Opcode.CONT:
                    parts.append(bytes(event.data))
                else:
                    continue  # ping and pong: answered by the protocol itself
                if event.fin:
                    whole = b"".join(parts)
                    if text:
                        await browser.send_text(whole.decode())
                    else:
                        await browser.send_bytes(whole)
            await flush()
            if not data:
                return

    try:
        await until_either_ends(to_job(), to_browser())
    finally:
        await close_quietly(browser)


def _ids(conn: HTTPConnection) -> tuple[int, int]:
    params = conn.path_params
    return int(params["job_id"]), int(params["port"])


async def _handshake(protocol: ClientProtocol, stream: TunnelStream) -> BackendResponse | None:
    """The job's answer to our WebSocket handshake (None: the stream ended first).
    Raises `httpcore.ReadError` with the agent's message when the port cannot be reached."""
    while True:
        data = await _feed(protocol, stream)
        for event in protocol.events_received():
            if isinstance(event, BackendResponse):
                return event
        if not data:
            return None


async def _feed(protocol: ClientProtocol, stream: TunnelStream) -> bytes:
    """Read what the job sent next into ``protocol`` (its end, when b"" is returned)."""
    data = await stream.read(_READ_BYTES)
    if data:
        protocol.receive_data(data)
    else:
        protocol.receive_eof()
    return data
