"""Where agents' metric batches land: history, the latest sample of every node, XID
events, disk usage, and which GPUs are busy with work Corral did not start.

The latest samples live in memory (what `corral top`, ``/metrics`` and the dashboard
show now); history goes to the `MetricsStore`. Unmanaged use is the one thing that
reaches the scheduler's store: a GPU (or MIG instance) with a process that is not a
Corral job's gets ``unmanaged`` set on its row, named by user, and the scheduler hands
it to no one until a later sample shows it free.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from corral.core.gpuview import unmanaged_label
from corral.core.telemetry import GpuProcess, MetricsBatch, NodeSample, UserDiskUsage, XidEvent
from corral.server.metrics.store import GPU_METRICS, HOST_METRICS, MetricsStore

MAX_XID_EVENTS_KEPT = 1000


@dataclass
class NodeLatest:
    """A node's newest sample and when it arrived (server clock)."""

    sample: NodeSample
    received_at: datetime
    disk_usage: list[UserDiskUsage] = field(default_factory=list)


def describe_unmanaged(processes: list[GpuProcess]) -> str | None:
    """``"alice (pid 4242 python), bob (container bob_train)"``, or None when every
    process is a Corral job's (each named as `corral top` names it)."""
    labels = {label for p in processes if (label := unmanaged_label(p)) is not None}
    return ", ".join(sorted(labels))[:1000] or None


def unmanaged_of(sample: NodeSample) -> tuple[dict[int, str | None], dict[str, str | None]]:
    """Per GPU index and per MIG UUID: who uses it outside Corral (None: nobody)."""
    gpus: dict[int, str | None] = {}
    mig: dict[str, str | None] = {}
    for gpu in sample.gpus:
        if gpu.error is not None:
            continue  # unknown now: keep what was known
        gpus[gpu.index] = describe_unmanaged(gpu.processes)
        for instance in gpu.mig:
            mig[instance.uuid] = describe_unmanaged(instance.processes)
    return gpus, mig


class MetricsHub:
    def __init__(self, store: MetricsStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._latest: dict[str, NodeLatest] = {}
        self._xid: deque[tuple[str, XidEvent]] = deque(maxlen=MAX_XID_EVENTS_KEPT)
        self._last_xid: dict[tuple[str, int], int] = {}

    def ingest(self, node: str, batch: MetricsBatch, now: datetime) -> NodeLatest | None:
        """Store a batch's samples and remember the newest. Returns the node's latest."""
        gpu_rows: list[dict[str, object]] = []
        host_rows: list[dict[str, object]] = []
        job_rows: list[dict[str, object]] = []
        for sample in batch.samples:
            t = int(sample.at.timestamp())
            for gpu in sample.gpus:
                if gpu.error is not None:
                    continue
                row: dict[str, object] = {"node": node, "gpu": gpu.index, "t": t}
                row.update({m: getattr(gpu, m) for m in GPU_METRICS})
                gpu_rows.append(row)
            if sample.host is not None:
                host = sample.host
                hrow: dict[str, object] = {"node": node, "t": t}
                hrow.update({m: getattr(host, m) for m in HOST_METRICS})
                host_rows.append(hrow)
                job_rows.extend(
                    {
                        "job_id": j.job_id,
                        "rank": j.rank,
                        "node": node,
                        "t": t,
                        "cpu_percent": j.cpu_percent,
                        "memory_bytes": j.memory_bytes,
                    }
                    for j in host.jobs
                )
        self.store.add("gpu", gpu_rows)
        self.store.add("host", host_rows)
        self.store.add("job", job_rows)
        with self._lock:
            for event in batch.xid_events:
                self._xid.append((node, event))
                self._last_xid[(node, event.gpu_index)] = event.xid
            latest = self._latest.get(node)
            newest = max(batch.samples, key=lambda s: s.at, default=None)
            if newest is not None and (latest is None or newest.at >= latest.sample.at):
                disk = latest.disk_usage if latest else []
                latest = self._latest[node] = NodeLatest(newest, now, disk)
            if latest is not None and batch.disk_usage:
                latest.disk_usage = list(batch.disk_usage)
            return latest

    def latest(self) -> dict[str, NodeLatest]:
        with self._lock:
            return dict(self._latest)

    def latest_of(self, node: str) -> NodeLatest | None:
        with self._lock:
            return self._latest.get(node)

    def forget(self, node: str) -> None:
        with self._lock:
            self._latest.pop(node, None)

    def xid_events(self, node: str | None = None) -> list[tuple[str, XidEvent]]:
        with self._lock:
            return [(n, e) for n, e in self._xid if node is None or n == node]

    def last_xids(self) -> dict[tuple[str, int], int]:
        """The last XID seen per (node, GPU index)."""
        with self._lock:
            return dict(self._last_xid)
