"""A background loop as a class: ``run_once()`` is the work, the base owns the rest.

After Prefect's ``LoopService``: the base class keeps the interval, logs overruns and
errors without dying, stops on request, and ``run(loops=N)`` runs a fixed number of
iterations for tests. A loop may be woken early through ``wakeup`` (an asyncio.Event;
a `Wakeup` can also ask to skip the debounce).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from corral.server.signals import Wakeup

log = logging.getLogger("corral.server")


# A debounced wake-up waits at least this many times as long as the last iteration took
# (never longer than the interval): wake-ups that come in a stream (submissions) cannot
# keep a loop whose iterations are expensive (a scheduling cycle over a long queue) busy
# most of the time, while a cheap loop keeps its short debounce. Wake-ups "now" (devices
# were freed) do not wait at all.
DEBOUNCE_PER_ITERATION = 10.0


class LoopService:
    name = "loop"

    def __init__(
        self, interval: float, wakeup: asyncio.Event | None = None, debounce: float = 0.0
    ) -> None:
        self.interval = interval
        self.wakeup = wakeup
        self.debounce = debounce
        self._stop = asyncio.Event()
        self._took = 0.0  # seconds the last iteration took

    async def run_once(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()

    async def run(self, loops: int | None = None) -> None:
        """Run until stopped (or ``loops`` iterations). Errors are logged, not fatal."""
        done = 0
        while not self._stop.is_set() and (loops is None or done < loops):
            started = time.monotonic()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: iteration failed; retrying next interval", self.name)
            done += 1
            took = self._took = time.monotonic() - started
            if took > self.interval:
                log.warning(
                    "%s: iteration took %.2fs, over its %.2fs interval",
                    self.name,
                    took,
                    self.interval,
                )
            if loops is not None and done >= loops:
                break
            await self._sleep(max(0.0, self.interval - took))

    async def _sleep(self, seconds: float) -> None:
        waits = [asyncio.ensure_future(self._stop.wait())]
        if self.wakeup is not None:
            waits.append(asyncio.ensure_future(self.wakeup.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self.wakeup is not None and self.wakeup.is_set():
            self.wakeup.clear()
            now = self.wakeup.now if isinstance(self.wakeup, Wakeup) else None
            if self.debounce and (now is None or not now.is_set()):
                # Let a burst of submissions land so one cycle places them all (unless
                # woken "now", also while waiting here).
                debounce = min(
                    max(self.debounce, DEBOUNCE_PER_ITERATION * self._took), self.interval
                )
                if now is None:
                    await asyncio.sleep(debounce)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(now.wait(), debounce)
            if now is not None:
                now.clear()
