"""Monitoring on the node: sample every second, send in batches.

Two threads:

- the sampler takes a `NodeSample` every ``interval`` seconds: every GPU from the GPU
  back-end (NVML or simulated), its processes attributed to a Corral job, a container
  or a Unix user, and the host (CPU, memory, disks, network, per-job usage);
- the shipper sends what was sampled (with XID events and per-user disk usage) to
  ``POST /agent/metrics`` every ``push_seconds``, in requests of at most
  `SAMPLES_PER_REQUEST` samples. While the server is unreachable samples wait in a
  bounded buffer (`BUFFER_SAMPLES`, ten minutes); the oldest go first when it is full.

Nothing here may take a node down: a failing sample is logged and skipped, and the
sampler keeps its period by sleeping only what is left of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from corral.agent.gpus import GpuBackend
from corral.agent.retry import Backoff
from corral.client import ApiClient
from corral.core.errors import CorralError
from corral.core.telemetry import (
    GpuProcess,
    GpuSample,
    HostSample,
    MetricsBatch,
    NodeSample,
    UserDiskUsage,
    XidEvent,
)

log = logging.getLogger(__name__)

SAMPLES_PER_REQUEST = 60
BUFFER_SAMPLES = 600

# session id of a job worker's process group -> (job id, rank)
Sessions = Mapping[int, tuple[int, int]]


class HostSource(Protocol):
    def sample(self, jobs: Sessions) -> HostSample: ...


class Attributor(Protocol):
    def attribute(self, processes: Sequence[GpuProcess], jobs: Sessions) -> list[GpuProcess]: ...


class DiskSource(Protocol):
    def latest(self) -> list[UserDiskUsage]: ...


class Sampler:
    """Takes samples; `run` on a thread keeps doing so every ``interval`` seconds."""

    def __init__(
        self,
        gpus: GpuBackend,
        *,
        sessions: Callable[[], Sessions],
        host: HostSource | None,
        attributor: Attributor | None,
        interval: float = 1.0,
        buffer: int = BUFFER_SAMPLES,
        clock: Callable[[], float] = time.monotonic,
        on_sample: Callable[[NodeSample], object] | None = None,
    ) -> None:
        self.gpus = gpus
        self.on_sample = on_sample  # sees each sample once taken (the GPU memory watchdog)
        self.sessions = sessions
        self.host = host
        self.attributor = attributor
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[NodeSample] = deque(maxlen=buffer)
        self._xid: list[XidEvent] = []
        self.dropped = 0  # samples pushed out of a full buffer
        self.taken = 0

    def sample(self) -> NodeSample:
        """One sample now (also stored for the shipper)."""
        at = datetime.now(UTC)
        jobs = self.sessions()
        gpus = [self._attributed(g, jobs) for g in self.gpus.sample()]
        host = self.host.sample(jobs) if self.host is not None else None
        sample = NodeSample(at=at, gpus=gpus, host=host)
        events = self.gpus.xid_events()
        with self._lock:
            if len(self._samples) == self._samples.maxlen:
                self.dropped += 1
            self._samples.append(sample)
            self._xid.extend(events)
            self.taken += 1
        if self.on_sample is not None:
            try:
                self.on_sample(sample)
            except Exception:  # it must not cost the sample
                log.exception("checking a metrics sample failed")
        return sample

    def _attributed(self, gpu: GpuSample, jobs: Sessions) -> GpuSample:
        if self.attributor is None or not (gpu.processes or gpu.mig):
            return gpu
        return gpu.model_copy(
            update={
                "processes": self.attributor.attribute(gpu.processes, jobs),
                "mig": [
                    m.model_copy(update={"processes": self.attributor.attribute(m.processes, jobs)})
                    for m in gpu.mig
                ],
            }
        )

    def take(self, limit: int) -> tuple[list[NodeSample], list[XidEvent]]:
        """Up to ``limit`` of the oldest samples and every XID event, removed."""
        with self._lock:
            n = min(limit, len(self._samples))
            samples = [self._samples.popleft() for _ in range(n)]
            events, self._xid = self._xid, []
            return samples, events

    def give_back(self, samples: list[NodeSample], events: list[XidEvent]) -> None:
        """Put back what could not be sent (in front: they are the oldest)."""
        with self._lock:
            room = (self._samples.maxlen or 0) - len(self._samples)
            keep = samples[-room:] if room > 0 else []
            self.dropped += len(samples) - len(keep)
            self._samples.extendleft(reversed(keep))
            self._xid = events + self._xid

    def run(self, stop: threading.Event) -> None:
        next_at = self._clock()
        while not stop.is_set():
            try:
                self.sample()
            except Exception:  # a bad sample must not end monitoring
                log.exception("taking a metrics sample failed")
            next_at += self.interval
            delay = next_at - self._clock()
            if delay < 0:  # fell behind (a slow sample): skip, never burst
                next_at = self._clock()
                delay = 0.0
            stop.wait(delay)


class Shipper:
    """Sends the sampler's samples to the server every ``push_seconds``."""

    def __init__(
        self,
        client: ApiClient,
        sampler: Sampler,
        *,
        disk: DiskSource | None = None,
        push_seconds: float = 2.0,
        backoff: Backoff | None = None,
        say: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.client = client
        self.sampler = sampler
        self.disk = disk
        self.push_seconds = push_seconds
        self.backoff = backoff or Backoff()
        self.say = say
        self._disk_sent: list[UserDiskUsage] | None = None
        self._failing = False
        self.sent = 0

    def push(self) -> bool:
        """Send everything buffered now; False when the server could not take it."""
        while True:
            samples, events = self.sampler.take(SAMPLES_PER_REQUEST)
            disk = self.disk.latest() if self.disk is not None else []
            new_disk = disk if disk and disk != self._disk_sent else []
            if not samples and not events and not new_disk:
                return True
            batch = MetricsBatch(samples=samples, xid_events=events, disk_usage=new_disk)
            try:
                self.client.request(
                    "POST",
                    "/agent/metrics",
                    content=batch.model_dump_json(exclude_defaults=True).encode(),
                    headers={"content-type": "application/json"},
                )
            except CorralError as exc:
                self.sampler.give_back(samples, events)
                if not self._failing:
                    self.say(f"could not send metrics ({exc}); keeping them to send later")
                self._failing = True
                return False
            if self._failing:
                self.say("metrics are reaching the server again")
            self._failing = False
            self.sent += len(samples)
            if new_disk:
                self._disk_sent = new_disk
            if len(samples) < SAMPLES_PER_REQUEST:
                return True

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.push_seconds):
            if not self.push():
                stop.wait(self.backoff.delay())
            else:
                self.backoff.reset()
