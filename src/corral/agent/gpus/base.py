"""What every GPU back-end provides: an inventory of the node's GPUs, and samples of them.

A back-end is NVML (real NVIDIA GPUs), simulated (a profile such as ``8xA100-80GB`` for
machines without GPUs) or none (a CPU-only node, with the reason why). Registration
needs the inventory; monitoring samples the GPUs (`GpuBackend.sample`) about once a
second and collects XID errors (`GpuBackend.xid_events`), in the wire format of
`corral.core.telemetry`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from corral.core.schemas import GpuInfo
from corral.core.telemetry import MAX_PROCESSES, GpuProcess, GpuSample, XidEvent

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

    def sample(self) -> tuple[GpuSample, ...]:
        """Every GPU of the inventory now: one sample each, in index order.

        Processes are listed with ``owner="unknown"`` (attribution to jobs and users is
        done by the caller). A GPU's ``processes`` are all those on it, its MIG
        instances' included; each `MigSample` lists its own. What a device cannot
        report is None, never 0; a GPU that cannot be read at all gets a sample with
        ``error`` set, and the others are still sampled. The caller stamps the time.
        Cheap enough to call every second (static facts are cached).
        """
        ...

    def xid_events(self) -> list[XidEvent]:
        """The XID errors seen since the previous call, oldest first (drains them)."""
        ...

    def close(self) -> None:
        """Release the back-end's resources (NVML handle, event thread); idempotent."""
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

    def sample(self) -> tuple[GpuSample, ...]:
        return ()

    def xid_events(self) -> list[XidEvent]:
        return []

    def close(self) -> None:
        pass


def merge_processes(processes: list[GpuProcess]) -> list[GpuProcess]:
    """One entry per PID, by PID: a process on several MIG instances of a GPU is listed
    once for the GPU, with the sum of its memory (None if any part is unknown)."""
    merged: dict[int, GpuProcess] = {}
    for process in processes:
        known = merged.get(process.pid)
        if known is None:
            merged[process.pid] = process
            continue
        memory = (
            None
            if known.used_memory_bytes is None or process.used_memory_bytes is None
            else known.used_memory_bytes + process.used_memory_bytes
        )
        merged[process.pid] = known.model_copy(update={"used_memory_bytes": memory})
    return [merged[pid] for pid in sorted(merged)][:MAX_PROCESSES]


def describe_models(devices: tuple[GpuInfo, ...] | list[GpuInfo]) -> str:
    """``"NVIDIA A100-SXM4-80GB"`` for a uniform node, ``"2x A, 1x B"`` for a mixed one."""
    counts = Counter(d.model for d in devices)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{n}x {model}" for model, n in counts.items())


def plural(n: int, word: str) -> str:
    """``plural(1, "GPU")`` → ``"1 GPU"``; ``plural(8, "GPU")`` → ``"8 GPUs"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
