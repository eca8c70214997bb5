"""Retry pacing and the one-line connection status the agent prints."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays in seconds for retrying an unreachable server: ``initial`` doubling up to
    ``maximum``, each with up to 10 % random spread so a restarted server is not hit by
    every node in the same instant."""

    initial: float = 0.5
    maximum: float = 5.0
    _next: float = field(default=0.0, init=False)

    def delay(self) -> float:
        """The next delay (seconds); each call doubles the following one."""
        current = self._next or self.initial
        self._next = min(current * 2, self.maximum)
        return current * random.uniform(0.9, 1.0)

    def reset(self) -> None:
        self._next = 0.0


class ConnectionStatus:
    """Says "server unreachable, retrying…" once when the server is lost and "connected"
    once when it answers again, however many threads notice."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say
        self._lock = threading.Lock()
        self._reachable: bool | None = None  # None: not tried yet

    def lost(self, reason: str) -> None:
        with self._lock:
            if self._reachable is False:
                return
            self._reachable = False
        self._say(f"server unreachable, retrying… ({reason})")

    def ok(self) -> None:
        with self._lock:
            was = self._reachable
            self._reachable = True
        if was is False:
            self._say("connected")
