"""Parsing and printing of the quantities users type: memory sizes and durations.

Memory is always carried as an integer number of bytes inside Corral; users write
``16GiB``, ``512MiB``, ``20G`` (G = GiB here, as Slurm and Docker read it) or plain bytes.
"""

from __future__ import annotations

import re

from corral.core.errors import InvalidRequest

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "ki": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "ti": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(text: str, *, field: str = "memory") -> int:
    """Return the number of bytes in ``text`` (``"16GiB"`` → 17179869184).

    Raises `InvalidRequest` naming ``field`` for anything that is not a size.
    """
    match = _MEMORY_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise InvalidRequest(
            f"{field}: {text!r} is not a size (examples: 512MiB, 16GiB, 1TiB)", field=field
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(n: int | None) -> str:
    """Print a byte count the way people read it: ``80GiB``, ``1.5GiB``, ``512MiB``."""
    if n is None:
        return "-"
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n}B"


def format_duration(seconds: float | None) -> str:
    """Print a duration compactly: ``42s``, ``5m3s``, ``2h10m``, ``8h``, ``3d4h``.

    A trailing zero unit is left out (``8h``, not ``8h0m``; ``5m``, not ``5m0s``).
    """
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        big, unit, rest, sub = s // 60, "m", s % 60, "s"
    elif s < 86400:
        big, unit, rest, sub = s // 3600, "h", s % 3600 // 60, "m"
    else:
        big, unit, rest, sub = s // 86400, "d", s % 86400 // 3600, "h"
    return f"{big}{unit}{rest}{sub}" if rest else f"{big}{unit}"
