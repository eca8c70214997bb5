"""Simulated GPUs for machines without any: development, tests and demos.

A profile ``NxMODEL`` (``8xA100-80GB``, ``4xRTX4090``) gives N devices that look like the
real thing (names as ``nvidia-smi`` prints them, UUIDs in NVIDIA's format) but are
labelled simulated everywhere: in the inventory, on every device, and in the message the
agent prints. Nothing runs on them; jobs get ``CORRAL_GPUS_SIMULATED=1``.

A MIG layout may follow: ``8xH100-80GB,mig=0-1:1g.10gb*7/2:3g.40gb*2`` puts seven
1g.10gb instances on GPUs 0 and 1 and two 3g.40gb on GPU 2 (``all:`` for every GPU).
"""

from __future__ import annotations

import re
import uuid

from corral.agent.gpus.base import GIB, GpuInventory, describe_models, plural
from corral.core.schemas import GpuInfo, MigInstance

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

_PROFILE_RE = re.compile(r"^\s*(\d+)\s*x\s*([a-z0-9-]+)\s*(?:,\s*mig=(.+))?$", re.IGNORECASE)
_MIG_GROUP_RE = re.compile(r"^(all|\d+(?:-\d+)?):(.+)$")
_MIG_PART_RE = re.compile(r"^([1-7])g\.(\d+)gb(?:\*(\d+))?$")
# Models whose real counterparts support MIG.
MIG_MODELS = frozenset({"A100-80GB", "A100-40GB", "H100-80GB", "H200-141GB"})
MIG_SYNTAX = "mig=GPUS:PROFILE[*COUNT][+…][/GPUS:…], e.g. mig=0-1:1g.10gb*7/2:3g.40gb*2"
# Fixed namespace so a node's simulated UUIDs are the same after every restart.
_UUID_NAMESPACE = uuid.UUID("6f1c9a52-3b7e-5d0a-9c4e-2a8b7f0d1e33")


def parse_profile(profile: str) -> tuple[int, str]:
    """``"8xa100-80gb"`` → ``(8, "A100-80GB")``. Raises `ValueError` naming the syntax."""
    count, model, _mig = _parse(profile)
    return count, model


def parse_mig(spec: str, count: int, model: str) -> dict[int, list[tuple[int, int]]]:
    """A MIG layout → {GPU index: [(compute slices, memory GiB), …]}.

    Raises `ValueError` for bad syntax, GPUs out of range, a model without MIG, or a GPU
    given more than its 7 compute slices or its memory.
    """
    if model not in MIG_MODELS:
        raise ValueError(f"{model} GPUs have no MIG (MIG models: {', '.join(sorted(MIG_MODELS))})")
    memory_gib = MODELS[model][1] // GIB
    layout: dict[int, list[tuple[int, int]]] = {}
    for group in spec.split("/"):
        match = _MIG_GROUP_RE.match(group.strip().lower())
        if match is None:
            raise ValueError(f"bad MIG layout {group!r}: use {MIG_SYNTAX}")
        where, parts = match.groups()
        if where == "all":
            gpus = range(count)
        else:
            first, _, last = where.partition("-")
            gpus = range(int(first), int(last or first) + 1)
        if not gpus or gpus[-1] >= count:
            raise ValueError(f"MIG layout {group!r}: GPUs are numbered 0 to {count - 1}")
        instances: list[tuple[int, int]] = []
        for part in parts.split("+"):
            pm = _MIG_PART_RE.match(part.strip())
            if pm is None:
                raise ValueError(f"bad MIG profile {part!r}: use {MIG_SYNTAX}")
            slices, gib, n = int(pm.group(1)), int(pm.group(2)), int(pm.group(3) or 1)
            instances += [(slices, gib)] * n
        if sum(sl for sl, _ in instances) > 7 or sum(g for _, g in instances) > memory_gib:
            raise ValueError(
                f"MIG layout {group!r}: more than a GPU's 7 compute slices or {memory_gib} GiB"
            )
        for gpu in gpus:
            layout[gpu] = instances
    return layout


def _parse(profile: str) -> tuple[int, str, str | None]:
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
    return count, model, match.group(3)


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
        count, model, mig_spec = _parse(profile)
        layout = parse_mig(mig_spec, count, model) if mig_spec else {}
        full_name, memory_bytes = MODELS[model]
        self.profile = f"{count}x{model}" + (f",mig={mig_spec}" if mig_spec else "")
        self._devices = tuple(
            GpuInfo(
                index=i,
                uuid=simulated_uuid(node_name, i),
                model=full_name,
                memory_bytes=memory_bytes,
                simulated=True,
                mig=[
                    MigInstance(
                        uuid=f"MIG-{uuid.uuid5(_UUID_NAMESPACE, f'{node_name}/{i}/mig/{slot}')}",
                        profile=f"{slices}g.{gib}gb",
                        gpu_instance_id=slot + 1,
                        compute_instance_id=0,
                        compute_slices=slices,
                        memory_bytes=gib * GIB,
                    )
                    for slot, (slices, gib) in enumerate(layout.get(i, []))
                ],
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
