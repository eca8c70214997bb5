"""One way for benchmarks to be interrupted without leaving processes behind."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


def _interrupted(signum: int, frame: FrameType | None) -> None:
    """SIGTERM or SIGINT: unwind through the finally blocks that stop processes. Later
    ones are ignored, so that they cannot cut the clean-up short (``timeout`` sends its
    signal twice, to the process and to its group; Ctrl-C may be pressed again)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def clean_interrupts() -> Iterator[None]:
    """While inside, SIGTERM and SIGINT raise KeyboardInterrupt once, then are ignored."""
    previous = {sig: signal.signal(sig, _interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
