"""The GPU memory watchdog (`corral.agent.gpushare`): samples in, notices and stops out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from agent_testkit import assignment

from corral.agent.gpushare import (
    SAMPLES_OVER,
    TOLERANCE_BYTES,
    ShareWatchdog,
    allowed_bytes,
    usage_by_worker,
)
from corral.agent.jobdirs import JobKey
from corral.core.schemas import Assignment
from corral.core.telemetry import GpuProcess, GpuSample, NodeSample

GiB = 1024**3
MiB = 1024**2
SHARE = 20 * GiB
KEY = JobKey(7, 1, 0)


def process(pid: int, used: int | None, job: int | None = 7, rank: int = 0) -> GpuProcess:
    if job is None:
        return GpuProcess(pid=pid, used_memory_bytes=used, owner="user", user="bob")
    return GpuProcess(pid=pid, used_memory_bytes=used, owner="job", job_id=job, rank=rank)


def sample(*processes: GpuProcess, gpu: int = 0) -> NodeSample:
    gpus = [
        GpuSample(
            index=i,
            uuid=f"GPU-{i}",
            memory_total_bytes=80 * GiB,
            processes=list(processes) if i == gpu else [],
        )
        for i in range(2)
    ]
    return NodeSample(at=datetime.now(UTC), gpus=gpus)


def half_gpu_job(policy: str = "warn", **overrides: Any) -> Assignment:
    fields: dict[str, Any] = {
        "gpu_ids": [0],
        "gpu_uuids": ["GPU-0"],
        "gpu_fraction": 0.25,
        "gpu_memory_bytes": SHARE,
        "gpu_memory_policy": policy,
        "state": "running",
    }
    fields.update(overrides)
    return assignment(7, **fields)


class Recorder:
    """A watchdog over given assignments, recording what it does."""

    def __init__(self, *assignments: Assignment, samples_over: int = SAMPLES_OVER) -> None:
        self.assignments = list(assignments)
        self.notices: list[tuple[JobKey, str]] = []
        self.stops: list[tuple[JobKey, str]] = []
        self.watchdog = ShareWatchdog(
            assignments=lambda: self.assignments,
            notify=lambda key, message: self.notices.append((key, message)),
            stop=lambda key, reason: self.stops.append((key, reason)),
            samples_over=samples_over,
        )

    def feed(self, *used: int, **where: Any) -> None:
        """One sample per value: the job's one process using that many bytes."""
        for n in used:
            self.watchdog.check(sample(process(100, n), **where))


def test_allowed_is_the_share_plus_a_tolerance() -> None:
    assert allowed_bytes(SHARE, TOLERANCE_BYTES, 0.02) == SHARE + int(SHARE * 0.02)
    # A small share gets the fixed tolerance: a CUDA context alone is a few hundred MiB.
    assert allowed_bytes(1 * GiB, TOLERANCE_BYTES, 0.02) == 1 * GiB + TOLERANCE_BYTES


def test_usage_adds_up_a_workers_processes_per_gpu_and_ignores_others() -> None:
    s = sample(
        process(1, 3 * GiB),
        process(2, 4 * GiB),
        process(3, None),  # NVML could not say: counts 0
        process(4, 9 * GiB, rank=1),
        process(5, 50 * GiB, job=8),
        process(6, 70 * GiB, job=None),  # not a job's
    )
    assert usage_by_worker(s.gpus) == {(7, 0, 0): 7 * GiB, (7, 1, 0): 9 * GiB, (8, 0, 0): 50 * GiB}


@pytest.mark.parametrize(
    ("used", "acts"),
    [
        # (bytes used in each sample, whether it acts after them)
        ([SHARE] * 5, False),  # exactly its share
        ([SHARE + 400 * MiB] * 5, False),  # within the 2 % tolerance
        ([SHARE + 500 * MiB] * 3, True),  # beyond it, three samples in a row
        ([30 * GiB, 30 * GiB], False),  # two samples are not enough
        ([30 * GiB, 30 * GiB, SHARE, 30 * GiB, 30 * GiB], False),  # a dip resets the count
        ([30 * GiB, 30 * GiB, SHARE, 30 * GiB, 30 * GiB, 30 * GiB], True),
    ],
)
def test_it_acts_only_after_consecutive_samples_over_the_tolerance(
    used: list[int], acts: bool
) -> None:
    r = Recorder(half_gpu_job("warn"))
    r.feed(*used)
    assert bool(r.notices) is acts
    assert r.stops == []


def test_warn_tells_the_server_once_per_attempt_with_the_numbers() -> None:
    r = Recorder(half_gpu_job("warn"))
    r.feed(*[30 * GiB] * 10)
    assert r.notices == [
        (
            KEY,
            "exceeded its GPU memory share (used 30GiB of its 20GiB share on GPU 0): other "
            "jobs on this GPU may run out of memory (its project's policy is warn: it keeps "
            "running)",
        )
    ]
    assert r.stops == []
    # A new attempt of the same job is a new worker: it is warned about again.
    r.assignments = [half_gpu_job("warn", attempt=2)]
    r.feed(*[30 * GiB] * 3)
    assert [key for key, _ in r.notices] == [KEY, JobKey(7, 2, 0)]


def test_stop_asks_the_supervisor_to_stop_the_worker_saying_why() -> None:
    r = Recorder(half_gpu_job("stop"))
    r.feed(*[25 * GiB] * 5)
    reason = "exceeded its GPU memory share (used 25GiB of its 20GiB share on GPU 0)"
    assert r.stops == [(KEY, reason)]  # once, although it stays over until it is gone
    assert r.notices == [(KEY, f"{reason}: stopping it (its project's policy is stop)")]


@pytest.mark.parametrize(
    "job",
    [
        half_gpu_job("off"),
        half_gpu_job("stop", gpu_memory_bytes=None, gpu_fraction=None),  # a whole GPU
        half_gpu_job("stop", stop=True, state="stopping"),  # already being stopped
    ],
    ids=["policy-off", "whole-gpu", "stopping"],
)
def test_jobs_it_leaves_alone(job: Assignment) -> None:
    r = Recorder(job)
    r.feed(*[79 * GiB] * 5)
    assert (r.notices, r.stops) == ([], [])


def test_memory_on_another_gpu_or_of_another_job_does_not_count() -> None:
    r = Recorder(half_gpu_job("stop"))
    for _ in range(5):
        r.watchdog.check(sample(process(100, 60 * GiB, job=8)))  # job 8 on GPU 0
    r.feed(*[60 * GiB] * 5, gpu=1)  # job 7's process, but on GPU 1: not its share's GPU
    assert (r.notices, r.stops) == ([], [])
