"""What every GPU back-end provides: an inventory of the node's GPUs.

A back-end is NVML (real NVIDIA GPUs), simulated (a profile such as ``8xA100-80GB`` for
machines without GPUs) or none (a CPU-only node, with the reason why). Monitoring
(issue 4) adds sampling methods to `GpuBackend`; inventory is all registration needs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from corral.core.schemas import GpuInfo

GIB = 1024**3


@dataclass(frozen=True)
class GpuInventory:
    """The GPUs of one node as one back-end sees them.

    - ``backend``: ``"nvml"``, ``"simulated"`` or ``"none"``.
    - ``simulated``: True when the devices are not real hardware.
    - ``driver_version``: e.g. ``"550.54.15"``; ``cuda_version``: e.g. ``"12.4"``.
    - ``devices``: in NVML (PCI bus) index order; GPUs that could not be read are left out.
    - ``message``: one human line for the agent's start-up output, naming what was found,
      what was skipped and why, and saying SIMULATED for simulated devices.
    """

    backend: str
    simulated: bool
    driver_version: str | None
    cuda_version: str | None
    devices: tuple[GpuInfo, ...]
    message: str


class GpuBackend(Protocol):
    """A source of GPU facts for one node. Call `close` once when done."""

    name: str
    simulated: bool

    def inventory(self) -> GpuInventory:
        """The node's GPUs now (queried afresh on each call)."""
        ...

    def close(self) -> None:
        """Release the back-end's resources (NVML handle); idempotent."""
        ...


class NoGpuBackend:
    """The back-end of a CPU-only node: no GPUs, and a message saying why."""

    name = "none"
    simulated = False

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def inventory(self) -> GpuInventory:
        return GpuInventory(
            backend="none",
            simulated=False,
            driver_version=None,
            cuda_version=None,
            devices=(),
            message=f"{self.reason}: registering a CPU-only node",
        )

    def close(self) -> None:
        pass


def describe_models(devices: tuple[GpuInfo, ...] | list[GpuInfo]) -> str:
    """``"NVIDIA A100-SXM4-80GB"`` for a uniform node, ``"2x A, 1x B"`` for a mixed one."""
    counts = Counter(d.model for d in devices)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{n}x {model}" for model, n in counts.items())


def plural(n: int, word: str) -> str:
    """``plural(1, "GPU")`` → ``"1 GPU"``; ``plural(8, "GPU")`` → ``"8 GPUs"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
