"""Accounting units: how much of "one GPU" a job's request counts as (rule 7).

Every quantity the fair-share policy compares — quotas, limits, fair shares, what a
project holds — is in GPUs, as a float:

* ``gpus`` whole GPUs count as that many; a fraction ``gpus`` < 1 counts as itself;
* a memory request counts as its part of the *largest* GPU in the node pools the job may
  use (``memory / largest``), the same number while it waits and while it runs, so a
  job's binding never changes its project's fair share (which would make the scheduler
  undo its own decisions);
* a MIG instance counts as its compute slices out of 7 (``1g.10gb`` = 1/7);
* a gang counts as ``workers`` x its per-worker amount.

Floats are compared with `EPS` so that 7 x (1/7) is 1.
"""

from __future__ import annotations

import math
import re

EPS = 1e-6
"""Tolerance of every comparison of GPU amounts (GPUs)."""

MIG_COMPUTE_SLICES = 7
"""A MIG-capable GPU has 7 compute slices; an instance holds some of them."""

_MIG_PROFILE = re.compile(r"^(\d+)g\.(\d+)gb(?:\+\w+)?$")


def mig_profile_slices(profile: str) -> int | None:
    """Compute slices of a MIG profile name (``"3g.40gb"`` → 3), None if not a profile."""
    match = _MIG_PROFILE.match(profile)
    if match is None:
        return None
    slices = int(match.group(1))
    return slices if 1 <= slices <= MIG_COMPUTE_SLICES else None


def is_whole(value: float) -> bool:
    """True when ``value`` (GPUs) is an integer within `EPS`."""
    return abs(value - round(value)) <= EPS


def floor_units(value: float) -> int:
    """Whole GPUs in ``value``, forgiving float noise (2.9999999 → 3)."""
    return math.floor(value + EPS)


def fmt_gpus(value: float) -> str:
    """A GPU amount for people: ``4``, ``0.5``, ``2.43`` (at most two decimals)."""
    if is_whole(value):
        return str(round(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def gpus_phrase(value: float) -> str:
    """``1 GPU``, ``4 GPUs``, ``0.5 GPU``, ``0 GPUs``: the amount with its unit."""
    return f"{fmt_gpus(value)} GPU{'' if EPS < value <= 1 + EPS else 's'}"


def fmt_gib(n_bytes: float) -> str:
    """Bytes as GiB for people: ``80 GiB``, ``12.5 GiB``."""
    gib = n_bytes / (1 << 30)
    text = str(round(gib)) if is_whole(gib) else f"{gib:.1f}"
    return f"{text} GiB"
