"""Simulated GPUs for machines without any: development, tests and demos.

A profile ``NxMODEL`` (``8xA100-80GB``, ``4xRTX4090``) gives N devices that look like the
real thing (names as ``nvidia-smi`` prints them, UUIDs in NVIDIA's format) but are
labelled simulated everywhere: in the inventory, on every device, and in the message the
agent prints. Nothing runs on them; jobs get ``CORRAL_GPUS_SIMULATED=1``.
"""

from __future__ import annotations

import re
import uuid

from corral.agent.gpus.base import GIB, GpuInventory, describe_models, plural
from corral.core.schemas import GpuInfo

# MODEL → (name as nvidia-smi prints it, memory in bytes). Memory is the marketed size in
# GiB; real boards report slightly less, which does not matter for scheduling tests.
MODELS: dict[str, tuple[str, int]] = {
    "A100-80GB": ("NVIDIA A100-SXM4-80GB", 80 * GIB),
    "A100-40GB": ("NVIDIA A100-SXM4-40GB", 40 * GIB),
    "H100-80GB": ("NVIDIA H100 80GB HBM3", 80 * GIB),
    "H200-141GB": ("NVIDIA H200", 141 * GIB),
    "L40S": ("NVIDIA L40S", 48 * GIB),
    "L4": ("NVIDIA L4", 24 * GIB),
    "A10": ("NVIDIA A10", 24 * GIB),
    "T4": ("Tesla T4", 16 * GIB),
    "V100-32GB": ("Tesla V100-SXM2-32GB", 32 * GIB),
    "V100-16GB": ("Tesla V100-SXM2-16GB", 16 * GIB),
    "RTX4090": ("NVIDIA GeForce RTX 4090", 24 * GIB),
    "RTX3090": ("NVIDIA GeForce RTX 3090", 24 * GIB),
}

# Plausible versions of a current data-centre driver; labelled simulated with the rest.
SIMULATED_DRIVER_VERSION = "550.54.15"
SIMULATED_CUDA_VERSION = "12.4"

MAX_SIMULATED_GPUS = 1024  # the most GPUs one node may register (NodeInventory.gpus)

_PROFILE_RE = re.compile(r"^\s*(\d+)\s*x\s*([a-z0-9-]+)\s*$", re.IGNORECASE)
# Fixed namespace so a node's simulated UUIDs are the same after every restart.
_UUID_NAMESPACE = uuid.UUID("6f1c9a52-3b7e-5d0a-9c4e-2a8b7f0d1e33")


def parse_profile(profile: str) -> tuple[int, str]:
    """``"8xa100-80gb"`` → ``(8, "A100-80GB")``. Raises `ValueError` naming the syntax."""
    match = _PROFILE_RE.match(profile)
    model = match.group(2).upper() if match else ""
    if match is None or model not in MODELS:
        raise ValueError(
            f"unknown simulated GPU profile {profile!r}: use NxMODEL (e.g. 8xA100-80GB) "
            f"with MODEL one of {', '.join(MODELS)}"
        )
    count = int(match.group(1))
    if not 1 <= count <= MAX_SIMULATED_GPUS:
        raise ValueError(
            f"simulated GPU profile {profile!r}: the count must be 1 to {MAX_SIMULATED_GPUS} "
            "(leave out the profile for a CPU-only node)"
        )
    return count, model


def simulated_uuid(node_name: str, index: int) -> str:
    """A UUID in NVIDIA's format, stable for a node name and GPU index."""
    return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{node_name}/{index}')}"


class SimulatedBackend:
    """N identical simulated GPUs described by a profile such as ``8xH100-80GB``.

    Raises `ValueError` for a profile it does not understand.
    """

    name = "simulated"
    simulated = True

    def __init__(self, profile: str, node_name: str) -> None:
        count, model = parse_profile(profile)
        full_name, memory_bytes = MODELS[model]
        self.profile = f"{count}x{model}"
        self._devices = tuple(
            GpuInfo(
                index=i,
                uuid=simulated_uuid(node_name, i),
                model=full_name,
                memory_bytes=memory_bytes,
                simulated=True,
            )
            for i in range(count)
        )

    def inventory(self) -> GpuInventory:
        return GpuInventory(
            backend="simulated",
            simulated=True,
            driver_version=SIMULATED_DRIVER_VERSION,
            cuda_version=SIMULATED_CUDA_VERSION,
            devices=self._devices,
            message=(
                f"{plural(len(self._devices), 'simulated GPU')} "
                f"({describe_models(self._devices)}) — SIMULATED, not real hardware"
            ),
        )

    def close(self) -> None:
        pass
