"""The agent's monitoring threads: sampling with attribution, batching, buffering."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx

from corral.agent.collector import SAMPLES_PER_REQUEST, Sampler, Sessions, Shipper
from corral.agent.gpus.base import GpuInventory
from corral.agent.retry import Backoff
from corral.client import ApiClient
from corral.core.telemetry import (
    GpuProcess,
    GpuSample,
    HostSample,
    JobUsage,
    MigSample,
    UserDiskUsage,
    XidEvent,
)


class FakeGpus:
    name = "fake"
    simulated = True

    def __init__(self) -> None:
        self.util = 10.0
        self.events: list[XidEvent] = []

    def inventory(self) -> GpuInventory:  # pragma: no cover - not used here
        raise NotImplementedError

    def sample(self) -> tuple[GpuSample, ...]:
        return (
            GpuSample(
                index=0,
                uuid="GPU-0",
                utilization_percent=self.util,
                processes=[GpuProcess(pid=100), GpuProcess(pid=200)],
            ),
            GpuSample(
                index=1,
                uuid="GPU-1",
                mig=[MigSample(uuid="MIG-1", processes=[GpuProcess(pid=300)])],
            ),
            GpuSample(index=2, uuid="GPU-2", error="GPU is lost"),
        )

    def xid_events(self) -> list[XidEvent]:
        events, self.events = self.events, []
        return events

    def close(self) -> None:
        pass


class FakeHost:
    def sample(self, jobs: Sessions) -> HostSample:
        return HostSample(
            cpu_percent=5.0,
            jobs=[JobUsage(job_id=job, rank=rank) for job, rank in jobs.values()],
        )


class FakeAttributor:
    """pid 100 is in session 100 (a job); every other pid is alice's."""

    def attribute(self, processes: Sequence[GpuProcess], jobs: Sessions) -> list[GpuProcess]:
        out = []
        for p in processes:
            if p.pid in jobs:
                job_id, rank = jobs[p.pid]
                out.append(p.model_copy(update={"owner": "job", "job_id": job_id, "rank": rank}))
            else:
                out.append(p.model_copy(update={"owner": "user", "user": "alice"}))
        return out


def sampler(gpus: FakeGpus | None = None, buffer: int = 600) -> Sampler:
    return Sampler(
        gpus or FakeGpus(),
        sessions=lambda: {100: (7, 0)},
        host=FakeHost(),
        attributor=FakeAttributor(),
        buffer=buffer,
    )


def test_a_sample_attributes_gpu_and_mig_processes_and_includes_the_host() -> None:
    s = sampler().sample()
    [g0, g1, g2] = s.gpus
    assert [(p.pid, p.owner, p.job_id) for p in g0.processes] == [
        (100, "job", 7),
        (200, "user", None),
    ]
    assert [(p.pid, p.owner, p.user) for p in g1.mig[0].processes] == [(300, "user", "alice")]
    assert g2.error == "GPU is lost"
    assert s.host is not None and [(j.job_id, j.rank) for j in s.host.jobs] == [(7, 0)]
    assert s.at.tzinfo is not None


def test_a_full_buffer_drops_the_oldest_samples() -> None:
    gpus = FakeGpus()
    s = sampler(gpus, buffer=3)
    for util in range(5):
        gpus.util = float(util)
        s.sample()
    samples, _ = s.take(10)
    assert [x.gpus[0].utilization_percent for x in samples] == [2.0, 3.0, 4.0]
    assert s.dropped == 2


class Server:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.batches: list[dict] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/agent/metrics"
        assert request.headers["content-type"] == "application/json"
        if self.fail:
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "down"}})
        self.batches.append(json.loads(request.content))
        return httpx.Response(204)


def shipper(s: Sampler, server: Server, disk: list[UserDiskUsage] | None = None) -> Shipper:
    client = ApiClient("http://server", "node-token", transport=httpx.MockTransport(server.handle))

    class Disk:
        def latest(self) -> list[UserDiskUsage]:
            return disk or []

    return Shipper(client, s, disk=Disk(), backoff=Backoff(initial=0.01))


def test_samples_go_in_requests_of_bounded_size_oldest_first() -> None:
    s, server = sampler(), Server()
    for _ in range(SAMPLES_PER_REQUEST + 5):
        s.sample()
    assert shipper(s, server).push()
    assert [len(b["samples"]) for b in server.batches] == [SAMPLES_PER_REQUEST, 5]
    times = [x["at"] for b in server.batches for x in b["samples"]]
    assert times == sorted(times)
    assert s.take(10) == ([], [])


def test_an_unreachable_server_keeps_the_samples_and_events_for_later() -> None:
    gpus = FakeGpus()
    s, server = sampler(gpus), Server(fail=True)
    ship = shipper(s, server)
    gpus.events.append(XidEvent(at=datetime.now(UTC), gpu_index=0, uuid="GPU-0", xid=79))
    for _ in range(3):
        s.sample()
    assert not ship.push()
    server.fail = False
    s.sample()
    assert ship.push()
    [batch] = server.batches
    assert len(batch["samples"]) == 4
    assert [e["xid"] for e in batch["xid_events"]] == [79]


def test_disk_usage_is_sent_when_it_changes_only() -> None:
    usage = [
        UserDiskUsage(
            path="/home", user="alice", used_bytes=10, files=1, scanned_at=datetime.now(UTC)
        )
    ]
    s, server = sampler(), Server()
    ship = shipper(s, server, disk=usage)
    s.sample()
    ship.push()
    s.sample()
    ship.push()
    assert [len(b.get("disk_usage", [])) for b in server.batches] == [1, 0]


def test_the_sampler_keeps_its_period_and_stops_promptly() -> None:
    s = sampler()
    s.interval = 0.02
    stop = threading.Event()
    thread = threading.Thread(target=s.run, args=(stop,))
    thread.start()
    threading.Event().wait(0.3)
    stop.set()
    thread.join(1)
    assert not thread.is_alive()
    assert 5 <= s.taken <= 20
