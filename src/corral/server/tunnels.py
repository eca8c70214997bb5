"""Interactive sessions through the server: the hub where a user's side and an agent's
side of a session meet, the relay between two WebSockets, and a session seen as a byte
stream (for the port proxy).

Agents only dial out, so the server cannot open anything on a node. A session is set
up in three steps (docs/interactive.md):

1. a user's request (a terminal WebSocket, a port stream, a proxied HTTP request)
   `TunnelHub.open`s a session for the node of the job; its `TunnelOffer` waits in
   the node's queue, and the node's tunnel long poll (``POST /agent/tunnels``) returns
   it at once;
2. the agent dials ``/agent/tunnels/{id}`` back with its node token; `TunnelHub.claim`
   hands that WebSocket to the waiting user side (`TunnelHub.connect`);
3. the user side relays messages both ways (`relay`) or reads the session as a stream
   (`TunnelStream`), and `TunnelHub.close`s it at the end.

A session the agent does not dial back for within ``dial_timeout`` seconds fails with a
message that says so. Everything here runs in the server's event loop (no locks).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpcore
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from corral.core import tunnel as wire
from corral.core.tunnel import TerminalStart, TunnelOffer

DIAL_TIMEOUT_SECONDS = 15.0
_MAX_OFFERS_PER_NODE = 256  # undelivered offers kept for one node (the oldest go first)


class TunnelTimeout(Exception):
    """The agent did not dial back in time; ``str(exc)`` says so for the user."""


@dataclass(eq=False)
class Tunnel:
    """One session: its offer, the node that must serve it, and (once dialed) the
    agent's WebSocket. ``finished`` is set when the session is over."""

    offer: TunnelOffer
    node_id: int
    node_name: str
    agent: asyncio.Future[WebSocket]
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    claimed: bool = False

    @property
    def id(self) -> str:
        return self.offer.id


class TunnelHub:
    """The sessions being set up or under way, and the offers each node has yet to
    collect. ``clock`` is monotonic seconds (for how long ago a node last polled)."""

    def __init__(
        self,
        dial_timeout: float = DIAL_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dial_timeout = dial_timeout
        self._clock = clock
        self._tunnels: dict[str, Tunnel] = {}
        self._offers: dict[int, list[TunnelOffer]] = {}
        self._wakeups: dict[int, asyncio.Event] = {}
        self._polled_at: dict[int, float] = {}
        self._closing = False  # the server is stopping: polls answer at once

    def __len__(self) -> int:
        return len(self._tunnels)

    # ---------------------------------------------------------------- user side

    def open(
        self,
        node_id: int,
        node_name: str,
        *,
        kind: str,
        job_id: int,
        attempt: int,
        rank: int,
        user: str,
        start: TerminalStart | None = None,
        port: int | None = None,
    ) -> Tunnel:
        """Register a session and queue its offer for the node's agent."""
        offer = TunnelOffer(
            id=secrets.token_urlsafe(18),
            kind=kind,
            job_id=job_id,
            attempt=attempt,
            rank=rank,
            user=user,
            start=start,
            port=port,
        )
        t = Tunnel(offer, node_id, node_name, asyncio.get_running_loop().create_future())
        self._tunnels[t.id] = t
        queue = self._offers.setdefault(node_id, [])
        queue.append(offer)
        del queue[:-_MAX_OFFERS_PER_NODE]
        wakeup = self._wakeups.pop(node_id, None)
        if wakeup is not None:
            wakeup.set()
        return t

    async def connect(self, t: Tunnel) -> WebSocket:
        """The agent's WebSocket once it dials back; raises `TunnelTimeout` after
        ``dial_timeout`` seconds (the session is then closed)."""
        try:
            return await asyncio.wait_for(asyncio.shield(t.agent), self.dial_timeout)
        except TimeoutError:
            self.close(t)
            raise TunnelTimeout(self._timeout_message(t)) from None

    def _timeout_message(self, t: Tunnel) -> str:
        polled = self._polled_at.get(t.node_id)
        if polled is None:
            why = (
                "it has not asked the server for sessions since the server started (is it "
                "running, and a version with interactive sessions?)"
            )
        else:
            why = f"it last asked the server for sessions {self._clock() - polled:.0f} s ago"
        return (
            f"the agent of node {t.node_name} did not connect back for this session within "
            f"{self.dial_timeout:g} s: {why}"
        )

    def close(self, t: Tunnel) -> None:
        """End the session (idempotent): drop it and its undelivered offer."""
        self._tunnels.pop(t.id, None)
        queue = self._offers.get(t.node_id)
        if queue:
            queue[:] = [o for o in queue if o.id != t.id]
        if not t.agent.done():
            t.agent.cancel()
        t.finished.set()

    # ---------------------------------------------------------------- agent side

    async def offers(
        self,
        node_id: int,
        wait_seconds: float,
        hangup: Callable[[], Awaitable[object]] | None = None,
    ) -> list[TunnelOffer]:
        """The node's undelivered offers (each is handed out once), waiting up to
        ``wait_seconds`` for one to arrive. ``hangup()`` completes when the poller hangs
        up (an agent that stopped): the wait ends then, and offers stay for the next."""
        self._polled_at[node_id] = self._clock()
        if not self._offers.get(node_id) and wait_seconds > 0 and not self._closing:
            wakeup = self._wakeups.setdefault(node_id, asyncio.Event())
            waits: list[asyncio.Future[object]] = [asyncio.ensure_future(wakeup.wait())]
            if hangup is not None:
                waits.append(asyncio.ensure_future(hangup()))
            try:
                done, _ = await asyncio.wait(
                    waits, timeout=wait_seconds, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for w in waits:
                    w.cancel()
            if len(waits) > 1 and waits[1] in done:
                return []
            self._polled_at[node_id] = self._clock()
        return self._offers.pop(node_id, [])

    def release_polls(self) -> None:
        """The server is stopping: end every waiting poll now, and wait in none from
        now on (run in the event loop)."""
        self._closing = True
        for event in self._wakeups.values():
            event.set()

    def claim(self, tunnel_id: str, node_id: int) -> Tunnel | None:
        """The session an agent dials back for, if it exists, belongs to that agent's
        node and was not claimed before; else None."""
        t = self._tunnels.get(tunnel_id)
        if t is None or t.node_id != node_id or t.claimed or t.agent.done():
            return None
        t.claimed = True
        return t

    def attach(self, t: Tunnel, agent: WebSocket) -> None:
        """Hand the agent's (accepted) WebSocket to the waiting user side."""
        if not t.agent.done():
            t.agent.set_result(agent)


# ---------------------------------------------------------------- relaying


async def relay(user: WebSocket, agent: WebSocket) -> None:
    """Copy messages both ways, unchanged, until either side closes; then close both."""

    async def pump(src: WebSocket, dst: WebSocket) -> None:
        while True:
            message = await src.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await dst.send_bytes(message["bytes"])
            elif message.get("text") is not None:
                await dst.send_text(message["text"])

    try:
        await until_either_ends(pump(user, agent), pump(agent, user))
    finally:
        await close_quietly(user)
        await close_quietly(agent)


async def until_either_ends(*directions: Coroutine[Any, Any, None]) -> None:
    """Run the two directions of a relay until one ends, then stop the other."""
    tasks = [asyncio.create_task(d) for d in directions]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def close_quietly(ws: WebSocket, code: int = 1000) -> None:
    """Close ``ws`` unless it is closed already."""
    if ws.application_state is WebSocketState.CONNECTED:
        # The peer may be gone already; how that shows differs between servers.
        with contextlib.suppress(Exception):
            await ws.close(code)


async def fail(ws: WebSocket, message: str) -> None:
    """Tell the user side why the session failed, and close it."""
    with contextlib.suppress(Exception):  # the user is gone already
        await ws.send_text(wire.error_message(message))
    await close_quietly(ws, 1011)


# ---------------------------------------------------------------- a session as a stream


class TunnelStream(httpcore.AsyncNetworkStream):
    """A port session seen as a TCP stream, for an HTTP client in the server (the port
    proxy). Data is binary messages; ``eof`` ends reading; ``error`` raises
    `httpcore.ReadError` with the agent's message."""

    def __init__(self, hub: TunnelHub, t: Tunnel, agent: WebSocket) -> None:
        self._hub = hub
        self._tunnel = t
        self._ws = agent
        self._buffer = b""
        self._eof = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        while not self._buffer and not self._eof:
            try:
                message = await asyncio.wait_for(self._ws.receive(), timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout("no answer from the job's port in time") from None
            except (RuntimeError, WebSocketDisconnect):
                message = {"type": "websocket.disconnect"}
            if message["type"] == "websocket.disconnect":
                self._eof = True
            elif message.get("bytes") is not None:
                self._buffer = message["bytes"]
            elif message.get("text") is not None:
                self._on_control(message["text"])
        chunk, self._buffer = self._buffer[:max_bytes], self._buffer[max_bytes:]
        return chunk

    def _on_control(self, text: str) -> None:
        try:
            control = wire.parse_control(text)
        except wire.ProtocolError as exc:
            raise httpcore.ReadError(f"the agent sent a bad message: {exc}") from None
        if control.type == "error":
            raise httpcore.ReadError(control.message)
        if control.type == "eof":
            self._eof = True

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        try:
            for i in range(0, len(buffer), wire.CHUNK_BYTES):
                await self._ws.send_bytes(buffer[i : i + wire.CHUNK_BYTES])
        except (RuntimeError, WebSocketDisconnect, OSError) as exc:
            raise httpcore.WriteError(f"the agent's side of the session closed ({exc})") from None

    async def aclose(self) -> None:
        await close_quietly(self._ws)
        self._hub.close(self._tunnel)

    def get_extra_info(self, info: str) -> object:
        return None
