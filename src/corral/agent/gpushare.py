"""The GPU memory watchdog: jobs on part of a shared GPU that use more than their share.

A job on a shared GPU (``--gpus 0.5``, ``--gpu-memory 20GiB``) has a share of the GPU's
memory, ``Assignment.gpu_memory_bytes``. Nothing in CUDA holds a job to it unless MPS
limits it (`corral.agent.mps`), and a job can leave MPS (unset the variables), so on
every monitoring sample the watchdog adds up the memory of each job worker's processes
on its GPU — the per-process "used GPU memory" NVML reports, attributed to jobs by the
sampler (`corral.agent.attribution`) — and compares it with the share.

- **Tolerance.** Used memory counts as over the share only beyond the share plus
  `TOLERANCE_SHARE` of it, at least `TOLERANCE_BYTES`: a CUDA context alone costs a few
  hundred MiB that a user asking for "20GiB" rarely counts.
- **Consecutive samples.** A worker is over its share only after `SAMPLES_OVER`
  samples in a row say so (with the default 1 s sampling, about 3 s), so a brief peak
  (or a sample taken while memory is being freed) does not act.
- **The project's policy** (`Assignment.gpu_memory_policy`): ``warn`` sends the server
  a notice (a job event, once per worker and attempt) with the numbers, and the job
  keeps running; ``stop`` sends the notice and asks the supervisor to stop the worker,
  whose exit report then says "exceeded its GPU memory share (used X of its Y share on
  GPU n)"; ``off`` does nothing.

It is reactive: it acts a few seconds after the fact, by which time another job on the
GPU may already have failed to allocate. docs/gpu-sharing.md says what each mechanism
guarantees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from corral.agent.jobdirs import JobKey
from corral.core.quantities import format_bytes
from corral.core.schemas import Assignment
from corral.core.telemetry import GpuSample, NodeSample

log = logging.getLogger(__name__)

TOLERANCE_BYTES = 256 * 1024**2
TOLERANCE_SHARE = 0.02
SAMPLES_OVER = 3
OVER_SHARE = "exceeded its GPU memory share"

Notify = Callable[[JobKey, str], None]  # (worker, message) → a job event on the server
Stop = Callable[[JobKey, str], None]  # (worker, reason) → the supervisor stops it


@dataclass(frozen=True)
class Overuse:
    """A worker found over its share: what it used and its share (bytes) on a GPU."""

    key: JobKey
    gpu_index: int
    used_bytes: int
    share_bytes: int
    policy: str

    def describe(self) -> str:
        """``"used 30 GiB of its 20 GiB share on GPU 0"``."""
        return (
            f"used {format_bytes(self.used_bytes)} of its {format_bytes(self.share_bytes)} "
            f"share on GPU {self.gpu_index}"
        )


def allowed_bytes(share_bytes: int, tolerance_bytes: int, tolerance_share: float) -> int:
    """What a worker may use before it counts as over ``share_bytes``."""
    return share_bytes + max(tolerance_bytes, int(share_bytes * tolerance_share))


def usage_by_worker(gpus: Sequence[GpuSample]) -> dict[tuple[int, int, int], int]:
    """Bytes of GPU memory used by each job worker's processes on each GPU:
    ``(job id, rank, GPU index) → bytes``. Processes whose memory NVML cannot report
    count as 0."""
    used: dict[tuple[int, int, int], int] = {}
    for gpu in gpus:
        for p in gpu.processes:
            if p.owner != "job" or p.job_id is None:
                continue
            key = (p.job_id, p.rank or 0, gpu.index)
            used[key] = used.get(key, 0) + (p.used_memory_bytes or 0)
    return used


class ShareWatchdog:
    """Checks each sample against the shares of the assignments of this node.

    ``assignments`` answers the node's current assignments (the desired state);
    ``notify`` and ``stop`` are how it acts (see the module's doc). Called from the
    sampler's thread only.
    """

    def __init__(
        self,
        *,
        assignments: Callable[[], Sequence[Assignment]],
        notify: Notify,
        stop: Stop,
        say: Callable[[str], None] = lambda _m: None,
        samples_over: int = SAMPLES_OVER,
        tolerance_bytes: int = TOLERANCE_BYTES,
        tolerance_share: float = TOLERANCE_SHARE,
    ) -> None:
        self._assignments = assignments
        self._notify = notify
        self._stop = stop
        self._say = say
        self.samples_over = max(1, samples_over)
        self.tolerance_bytes = tolerance_bytes
        self.tolerance_share = tolerance_share
        self._streak: dict[tuple[JobKey, int], int] = {}  # samples in a row over, per GPU
        self._acted: set[JobKey] = set()  # once per worker and attempt

    def check(self, sample: NodeSample) -> list[Overuse]:
        """Look at one sample; act on (and return) the workers found over their share."""
        watched = {
            JobKey(a.job_id, a.attempt, a.rank): a
            for a in self._assignments()
            if a.gpu_memory_bytes is not None and a.gpu_memory_policy != "off" and not a.stop
        }
        used = usage_by_worker(sample.gpus)
        streak: dict[tuple[JobKey, int], int] = {}
        found: list[Overuse] = []
        for key, a in watched.items():
            assert a.gpu_memory_bytes is not None
            allowed = allowed_bytes(a.gpu_memory_bytes, self.tolerance_bytes, self.tolerance_share)
            for gpu in a.gpu_ids:
                now = used.get((key.job_id, key.rank, gpu), 0)
                if now <= allowed:
                    continue
                n = streak[(key, gpu)] = self._streak.get((key, gpu), 0) + 1
                if n >= self.samples_over and key not in self._acted:
                    found.append(Overuse(key, gpu, now, a.gpu_memory_bytes, a.gpu_memory_policy))
        self._streak = streak  # a sample within the share resets the count
        self._acted &= watched.keys()  # forget workers that ended
        for overuse in found:
            self._act(overuse)
        return found

    def _act(self, o: Overuse) -> None:
        self._acted.add(o.key)
        what = f"{OVER_SHARE} ({o.describe()})"
        if o.policy == "stop":
            self._notify(o.key, f"{what}: stopping it (its project's policy is stop)")
            self._stop(o.key, what)
        else:
            self._notify(
                o.key,
                f"{what}: other jobs on this GPU may run out of memory (its project's "
                "policy is warn: it keeps running)",
            )
        self._say(f"job {o.key.job_id} attempt {o.key.attempt}: {what}; policy {o.policy}")
