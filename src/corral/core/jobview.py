"""How a job's GPU request and run time are written for people: the same in
`corral list`/`corral get` (from the API's models) and on the dashboard (from the store's
rows), so the page and the command always agree.

Pure functions over any object with the fields named in the protocols below.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from corral.core.quantities import format_bytes, format_duration
from corral.core.schemas import ContainerSpec


class Asks(Protocol):
    """What a job asks for (`corral.core.schemas.JobOut`, `corral.store.models.Job`)."""

    @property
    def gpus(self) -> float: ...
    @property
    def gpu_memory_bytes(self) -> int | None: ...
    @property
    def mig_profile(self) -> str | None: ...
    @property
    def workers(self) -> int: ...


def asked_text(job: Asks) -> str:
    """What a job asks for: ``2``, ``0.5``, ``20GiB``, ``mig 1g.10gb``, ``4x8`` (a gang
    of 4 workers of 8 GPUs each)."""
    if job.mig_profile is not None:
        asked = f"mig {job.mig_profile}"
    elif job.gpu_memory_bytes is not None:
        asked = format_bytes(job.gpu_memory_bytes).replace(" ", "")
    else:
        asked = f"{job.gpus:g}"
    return f"{job.workers}x{asked}" if job.workers > 1 else asked


def gpus_text(job: Asks, gpu_ids: Sequence[int]) -> str:
    """What it asks for, then (once bound) which GPUs it got: ``2 (0,1)``, ``0.5 (3)``
    (half of GPU 3), ``mig 1g.10gb (0)``. A gang's workers each have their own GPUs
    (listed per worker), so a gang is only ``4x8``."""
    asked = asked_text(job)
    if job.workers == 1 and gpu_ids:
        return f"{asked} ({','.join(str(i) for i in gpu_ids)})"
    return asked


def run_time_text(
    started_at: datetime | None, finished_at: datetime | None, terminal: bool, now: datetime
) -> str:
    """How long a job has run: until it finished, or until ``now`` while it runs; ``-``
    before it starts (or when it ended without a recorded finish). Naive times are UTC."""
    if started_at is None:
        return "-"
    end = finished_at or (None if terminal else now)
    if end is None:
        return "-"
    return format_duration(max(0.0, (_utc(end) - _utc(started_at)).total_seconds()))


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def container_fields(spec: ContainerSpec | None) -> list[tuple[str, str]]:
    """The rows `corral get` and the job page show for a container job (none for a host
    process): its image, mounts and shared memory."""
    if spec is None:
        return []
    image = spec.image + (" (as the image's user)" if spec.run_as_root else "")
    mounts = [
        f"{m.volume or m.source} → {m.target}{' (read-only)' if m.read_only else ''}"
        for m in spec.mounts
    ]
    shm = (
        "Docker's default (64 MiB)"
        if spec.shm_size_bytes is None
        else (format_bytes(spec.shm_size_bytes))
    )
    return [("Image", image), ("Volumes", "\n".join(mounts) or "-"), ("Shared memory", shm)]
