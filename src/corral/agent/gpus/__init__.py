"""GPU back-ends: NVML for real NVIDIA GPUs, simulated ones, or none (CPU-only node)."""

from __future__ import annotations

from corral.agent.gpus.base import GpuBackend, GpuInventory, NoGpuBackend
from corral.agent.gpus.nvml import open_nvml
from corral.agent.gpus.simulated import SimulatedBackend


def open_backend(simulate: str | None, node_name: str) -> GpuBackend:
    """The back-end for this node.

    ``simulate`` is a profile such as ``"8xA100-80GB"`` (raises `ValueError` if it is not
    valid); None means real GPUs through NVML. When NVML cannot be used (no driver, no
    library, version mismatch) the result is a CPU-only back-end whose inventory message
    says why: the agent never falls back to simulated GPUs on its own.
    """
    if simulate is not None:
        return SimulatedBackend(simulate, node_name)
    return open_nvml()


__all__ = ["GpuBackend", "GpuInventory", "NoGpuBackend", "SimulatedBackend", "open_backend"]
