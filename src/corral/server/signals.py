"""Wake-ups between the request threads and the server's asyncio loops.

Services run in worker threads; the scheduler loop and the agents' long polls wait on
asyncio events in the server's event loop. `Signals` bridges the two with
``call_soon_threadsafe`` so a job submitted in a thread wakes the scheduler at once,
and a binding wakes the long poll of exactly the node it concerns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable


class Wakeup(asyncio.Event):
    """A loop's wake-up event that can also say "now": `set` wakes the loop after its
    debounce (to batch a burst), `set_now` wakes it without one (and cuts one that is
    under way short)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = asyncio.Event()

    def set_now(self) -> None:
        self.now.set()
        self.set()


class Signals:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self.scheduler_wakeup = Wakeup()
        self._node_events: dict[int, asyncio.Event] = {}
        self._stopping = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the event loop the waiters run in (called once at server start)."""
        self._loop = loop

    def _call(self, fn: object) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(fn)  # type: ignore[arg-type]

    def wake_scheduler(self, *, now: bool = False) -> None:
        """Ask for a scheduling cycle soon (a job arrived, ended or a node changed).

        ``now``: devices were freed; the cycle skips the debounce, which is there to
        batch bursts of submissions, since jobs are waiting for exactly those devices.
        """
        self._call(self.scheduler_wakeup.set_now if now else self.scheduler_wakeup.set)

    def node_event(self, node_id: int) -> asyncio.Event:
        """The event a long poll of ``node_id`` waits on. Take it BEFORE reading state.
        Once the server is stopping it is set already: nobody waits any more."""
        if self._stopping:
            done = asyncio.Event()
            done.set()
            return done
        event = self._node_events.get(node_id)
        if event is None:
            event = self._node_events[node_id] = asyncio.Event()
        return event

    def nodes_changed(self, node_ids: Iterable[int]) -> None:
        """Wake the long polls of these nodes: their desired state changed."""
        for node_id in set(node_ids):
            self._call(lambda n=node_id: self._fire(n))

    def server_stopping(self, then: Callable[[], None] | None = None) -> None:
        """The server is stopping (SIGTERM/SIGINT; safe from a signal handler): end the
        nodes' long polls now, so the graceful shutdown does not wait out (and then
        cancel) requests held for up to a heartbeat period; ``then`` runs in the loop
        too (other long polls' release)."""

        def release() -> None:
            self._stopping = True
            for node_id in list(self._node_events):
                self._fire(node_id)
            if then is not None:
                then()

        self._call(release)

    def _fire(self, node_id: int) -> None:
        event = self._node_events.pop(node_id, None)
        if event is not None:
            event.set()
