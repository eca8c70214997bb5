"""Real cgroups for the tests of the process runtime's limits, under a parent of their own.

`usable` detects the machine's cgroups as the agent does, but with the parent
``corral-t<random>`` instead of ``corral``: a test never touches an agent's cgroups, nor
those of a test run beside it. `remove_tree` kills whatever is left in that parent and
deletes it.

Where cgroups cannot be used (not root, no memory or cpu controller mounted writable),
the tests that need them are skipped -- loudly: the reason starts with
`UNAVAILABLE_PREFIX` and the terminal summary counts them. ``CORRAL_REQUIRE_CGROUPS=1``
makes that a failure instead (for CI machines known to have them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from corral.agent.runtime import cgroups
from corral.agent.runtime.cgroups import Cgroups

UNAVAILABLE_PREFIX = "cgroups NOT usable here"
REQUIRE_ENV = "CORRAL_REQUIRE_CGROUPS"


def usable(needs: tuple[str, ...] = ("memory",)) -> Cgroups:
    """This machine's cgroups with a private parent, or a loud skip (or failure with
    ``$CORRAL_REQUIRE_CGROUPS``) when the controllers in ``needs`` are not usable."""
    found = cgroups.detect(parent=f"corral-t{uuid.uuid4().hex[:8]}")
    missing = [c for c in needs if c not in found.enforced]
    if missing:
        why = found.reason or f"no {', '.join(missing)} controller"
        reason = (
            f"{UNAVAILABLE_PREFIX} ({why}): the process runtime's CPU and memory limits "
            "are UNTESTED; run the tests as root on a machine with cgroup v1 or v2 "
            "memory and cpu controllers"
        )
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{reason} ({REQUIRE_ENV} is set)")
        pytest.skip(reason)
    return found


def remove_tree(found: Cgroups, timeout: float = 5.0) -> None:
    """SIGKILL everything in ``found``'s parent, in every hierarchy, and delete it."""
    for h in found.hierarchies:
        root = h.mount / found.parent
        if not root.is_dir():
            continue
        dirs = [Path(d) for d, _, _ in os.walk(root)]
        for d in reversed(dirs):  # children before their parents
            _kill_all(d)
            deadline = time.monotonic() + timeout
            while d.exists():
                try:
                    d.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)


def _kill_all(d: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in (d / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
