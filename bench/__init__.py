"""Corral's benchmarks: ``python -m bench [NAME ...]`` (or ``make bench``).

Every module ``bench/<name>_bench.py`` is one benchmark, selected by ``<name>`` (or by
its ``NAME`` if it defines one). A benchmark either

* defines ``run() -> dict``, which measures and returns a JSON-compatible record with at
  least ``"passed": bool`` (all targets met); the runner adds the machine and the date
  and writes ``bench/results/<name>.json``; or
* defines ``main(argv) -> int``, a complete command of its own that writes its own
  results and returns 0 when its targets are met (it can also be run as
  ``python -m bench.<name>_bench`` with its own options).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, cores, memory, Python, kernel."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
    }
