"""What the service helpers share about the processes they start (see ``__init__``)."""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when the thread that
    started it dies.

    The last line of defence against a leaked server: if pytest is killed (SIGKILL,
    ``os._exit`` from a hard timeout) no teardown runs, but the kernel still sends the
    child ``sig`` -- chosen as the service's clean shutdown (SIGINT for PostgreSQL's
    fast shutdown, SIGTERM for dockerd). ``prctl`` is looked up here, in the parent, so
    the forked child makes only one foreign call. None where ``prctl`` does not exist.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    number = int(sig)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, number, 0, 0, 0)

    return preexec
