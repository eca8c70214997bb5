"""What the cluster's GPUs look like to a person choosing where to run: short model
names, who uses a GPU outside Corral, and which GPUs can be had now.

Pure functions of `ClusterNow`, shared by `corral top`/`corral free` and the dashboard
(so the page and the command always agree).
"""

from __future__ import annotations

import re
from collections import Counter

from pydantic import BaseModel

from corral.core.errors import InvalidRequest
from corral.core.quantities import parse_memory
from corral.core.telemetry import ClusterNow, GpuNow, GpuProcess

_MODEL_PREFIXES = re.compile(r"^(?:NVIDIA\s+)?(?:GeForce\s+|Tesla\s+|Quadro\s+)?")
# Form factors and memory kinds: the same GPU to a user choosing where to run.
_MODEL_NOISE = re.compile(r"^(?:SXM\d*|PCIE|HBM\d*E?)$", re.IGNORECASE)


def short_model(model: str) -> str:
    """The model in a few characters: ``NVIDIA A100-SXM4-80GB`` → ``A100-80GB``,
    ``NVIDIA H100 80GB HBM3`` → ``H100-80GB``, ``NVIDIA GeForce RTX 4090`` → ``RTX4090``."""
    text = _MODEL_PREFIXES.sub("", model.strip())
    text = re.sub(r"\b([RG]TX) (?=\d)", r"\1", text)
    words = [w for w in re.split(r"[\s-]+", text) if w and not _MODEL_NOISE.match(w)]
    return "-".join(words) or "?"


def unmanaged_label(p: GpuProcess) -> str | None:
    """``alice (pid 4242 python)`` / ``bob (container bob_train)``, as the server names
    unmanaged use; None for a Corral job's process or one that could not be read."""
    if p.owner in ("job", "unknown"):
        return None
    who = p.user or "unknown user"
    if p.owner == "container" and p.container:
        return f"{who} (container {p.container})"
    return f"{who} (pid {p.pid}" + (f" {p.command})" if p.command else ")")


class SharedRoom(BaseModel):
    """A GPU holding fractional jobs that still has room.

    ``free_memory_bytes`` is derived, as the scheduler counts it: the GPU's memory minus
    each job's share (a fraction ``0.5`` holds half the memory; ``20GiB`` holds 20 GiB).
    None: a share could not be read, so the room is unknown.
    """

    gpu: int
    memory_bytes: int
    free_memory_bytes: int | None
    jobs: int


class MigRoom(BaseModel):
    """Free MIG instances of one profile on one GPU (instances the newest sample shows,
    less those held by jobs or used outside Corral)."""

    gpu: int
    profile: str
    free: int


class NodeFree(BaseModel):
    node: str
    pool: str
    models: list[str]
    free_gpus: list[int]  # indices of whole GPUs nobody holds or uses
    free_gpu_memory_bytes: list[int]  # memory of each free GPU, same order
    shared: list[SharedRoom]
    mig: list[MigRoom]


class FreeReport(BaseModel):
    """What `corral free` prints: ready nodes and their room, and the nodes skipped."""

    nodes: list[NodeFree]
    free_gpus: int
    not_ready: dict[str, str]  # node → state


def _share_bytes(share: str, memory: int) -> int | None:
    """Bytes a job's share holds of a GPU of ``memory`` bytes; None if unreadable."""
    try:
        fraction = float(share)
    except ValueError:
        try:
            return parse_memory(share)
        except InvalidRequest:
            return None
    return round(fraction * memory)


def _mig_room(gpu: GpuNow) -> list[MigRoom]:
    instances = gpu.sample.mig if gpu.sample is not None else []
    total = Counter(i.profile or "?" for i in instances)
    outside = Counter(
        i.profile or "?"
        for i in instances
        if any(unmanaged_label(p) is not None for p in i.processes)
    )
    held = Counter(j.share.removeprefix("mig ") for j in gpu.jobs if j.share)
    return [
        MigRoom(gpu=gpu.index, profile=profile, free=free)
        for profile in sorted(total)
        if (free := total[profile] - outside[profile] - held[profile]) > 0
    ]


def free_report(cluster: ClusterNow) -> FreeReport:
    """Which GPUs can be had now: on ready nodes, GPUs with no job and no unmanaged use;
    shared GPUs with memory left; free MIG instances by profile."""
    nodes = []
    for node in cluster.nodes:
        if node.state != "ready":
            continue
        free: list[GpuNow] = []
        shared: list[SharedRoom] = []
        mig: list[MigRoom] = []
        for gpu in sorted(node.gpus, key=lambda g: g.index):
            is_mig = bool(gpu.sample and gpu.sample.mig) or any(
                (j.share or "").startswith("mig ") for j in gpu.jobs
            )
            if gpu.unmanaged:
                continue
            if is_mig:
                mig.extend(_mig_room(gpu))
            elif not gpu.jobs:
                free.append(gpu)
            elif all(j.share for j in gpu.jobs):
                held = [_share_bytes(j.share or "", gpu.memory_bytes) for j in gpu.jobs]
                room = None if None in held else gpu.memory_bytes - sum(h or 0 for h in held)
                if room is None or room > 0:
                    shared.append(
                        SharedRoom(
                            gpu=gpu.index,
                            memory_bytes=gpu.memory_bytes,
                            free_memory_bytes=room,
                            jobs=len(gpu.jobs),
                        )
                    )
        nodes.append(
            NodeFree(
                node=node.name,
                pool=node.pool,
                models=list(dict.fromkeys(short_model(g.model) for g in node.gpus)),
                free_gpus=[g.index for g in free],
                free_gpu_memory_bytes=[g.memory_bytes for g in free],
                shared=shared,
                mig=mig,
            )
        )
    return FreeReport(
        nodes=nodes,
        free_gpus=sum(len(n.free_gpus) for n in nodes),
        not_ready={n.name: n.state for n in cluster.nodes if n.state != "ready"},
    )
