"""The wire format of monitoring: what agents sample and send, what the server serves.

Rules every producer keeps:

- **Not available is None, never 0.** A field a device or host cannot report (NVML's
  NOT_SUPPORTED, a sensor that is not there, a MIG instance's utilization) is None, and
  consumers show it as "n/a". Zero means measured zero.
- Units are in the field names: ``*_bytes``, ``*_bytes_per_s``, ``*_percent`` (0-100),
  ``*_watts``, ``*_celsius``, ``*_mhz``. Rates are averages over the time since the
  previous sample of the same counter (None on the first sample).
- A sample is taken at ``at`` (UTC) on the agent's clock.

Attribution (which job, container or user a GPU process belongs to) is decided on the
node, where the process tree and cgroups are visible (`corral.agent.attribution`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SAMPLES_PER_BATCH = 600  # ten minutes of 1-second samples
MAX_PROCESSES = 4096


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Owner = Literal["job", "container", "user", "unknown"]


class GpuProcess(_Strict):
    """A process using a GPU (or a MIG instance), and whose it is.

    ``owner``: ``job`` (started by Corral: ``job_id``/``rank`` set), ``container`` (a
    Docker container Corral did not start: ``container`` names it, ``user`` from its
    name pattern or labels), ``user`` (a plain process of Unix ``user``), ``unknown``
    (it ended or could not be read). Anything but ``job`` is unmanaged use.
    """

    pid: int = Field(ge=0)
    used_memory_bytes: int | None = Field(default=None, ge=0)
    owner: Owner = "unknown"
    job_id: int | None = None
    rank: int | None = None
    container: str | None = Field(default=None, max_length=256)
    user: str | None = Field(default=None, max_length=64)
    command: str | None = Field(default=None, max_length=256)

    @property
    def managed(self) -> bool:
        return self.owner == "job"


class MigSample(_Strict):
    """One MIG instance of a GPU. NVML reports no utilization per instance (None)."""

    uuid: str = Field(max_length=128)
    profile: str | None = Field(default=None, max_length=32)
    memory_used_bytes: int | None = Field(default=None, ge=0)
    memory_total_bytes: int | None = Field(default=None, ge=0)
    utilization_percent: float | None = Field(default=None, ge=0, le=100)
    processes: list[GpuProcess] = Field(default_factory=list, max_length=MAX_PROCESSES)


class GpuSample(_Strict):
    """One GPU at one instant. ``error`` set (and most fields None) when it could not be
    read, e.g. "GPU is lost" (fallen off the bus): the others are still sampled."""

    index: int = Field(ge=0)
    uuid: str = Field(max_length=128)
    utilization_percent: float | None = Field(default=None, ge=0, le=100)
    memory_utilization_percent: float | None = Field(default=None, ge=0, le=100)
    memory_used_bytes: int | None = Field(default=None, ge=0)
    memory_total_bytes: int | None = Field(default=None, ge=0)
    temperature_celsius: float | None = None
    power_watts: float | None = Field(default=None, ge=0)
    power_limit_watts: float | None = Field(default=None, ge=0)
    sm_clock_mhz: int | None = Field(default=None, ge=0)
    memory_clock_mhz: int | None = Field(default=None, ge=0)
    throttle_reasons: list[str] | None = Field(default=None, max_length=32)
    ecc_corrected_errors: int | None = Field(default=None, ge=0)
    ecc_uncorrected_errors: int | None = Field(default=None, ge=0)
    pcie_tx_bytes_per_s: float | None = Field(default=None, ge=0)
    pcie_rx_bytes_per_s: float | None = Field(default=None, ge=0)
    nvlink_tx_bytes_per_s: float | None = Field(default=None, ge=0)
    nvlink_rx_bytes_per_s: float | None = Field(default=None, ge=0)
    processes: list[GpuProcess] = Field(default_factory=list, max_length=MAX_PROCESSES)
    mig: list[MigSample] = Field(default_factory=list, max_length=64)
    error: str | None = Field(default=None, max_length=500)


class FilesystemUsage(_Strict):
    mount: str = Field(max_length=4096)
    used_bytes: int = Field(ge=0)
    total_bytes: int = Field(ge=0)


class JobUsage(_Strict):
    """Host resources of one job (one worker) on this node: its whole process tree."""

    job_id: int
    rank: int = 0
    cpu_percent: float | None = Field(default=None, ge=0)  # 100 = one core busy
    memory_bytes: int | None = Field(default=None, ge=0)  # resident set size
    processes: int = Field(default=0, ge=0)


class HostSample(_Strict):
    """The machine: CPU (100 = every core busy), memory, disks, network, sensors."""

    cpu_percent: float | None = Field(default=None, ge=0, le=100)
    cpu_count: int | None = Field(default=None, ge=1)
    load1: float | None = Field(default=None, ge=0)
    memory_used_bytes: int | None = Field(default=None, ge=0)
    memory_total_bytes: int | None = Field(default=None, ge=0)
    swap_used_bytes: int | None = Field(default=None, ge=0)
    swap_total_bytes: int | None = Field(default=None, ge=0)
    disk_read_bytes_per_s: float | None = Field(default=None, ge=0)
    disk_write_bytes_per_s: float | None = Field(default=None, ge=0)
    net_rx_bytes_per_s: float | None = Field(default=None, ge=0)
    net_tx_bytes_per_s: float | None = Field(default=None, ge=0)
    filesystems: list[FilesystemUsage] = Field(default_factory=list, max_length=256)
    temperatures_celsius: dict[str, float] | None = Field(default=None, max_length=256)
    power_watts: float | None = Field(default=None, ge=0)
    jobs: list[JobUsage] = Field(default_factory=list, max_length=MAX_PROCESSES)


class NodeSample(_Strict):
    at: datetime
    gpus: list[GpuSample] = Field(default_factory=list, max_length=1024)
    host: HostSample | None = None


class XidEvent(_Strict):
    """An NVIDIA XID error (a driver-reported GPU fault), as an event, not a gauge."""

    at: datetime
    gpu_index: int = Field(ge=0)
    uuid: str = Field(max_length=128)
    xid: int = Field(ge=0)
    message: str = Field(default="", max_length=500)


class UserDiskUsage(_Strict):
    """Bytes and files one Unix user owns under a configured path (e.g. /home)."""

    path: str = Field(max_length=4096)
    user: str = Field(max_length=64)
    used_bytes: int = Field(ge=0)
    files: int = Field(ge=0)
    scanned_at: datetime


class MetricsBatch(_Strict):
    """What an agent sends to ``POST /agent/metrics``: samples since the last batch."""

    samples: list[NodeSample] = Field(default_factory=list, max_length=MAX_SAMPLES_PER_BATCH)
    xid_events: list[XidEvent] = Field(default_factory=list, max_length=1000)
    disk_usage: list[UserDiskUsage] = Field(default_factory=list, max_length=10000)


# ---------------------------------------------------------------- what the server serves


class SeriesOut(BaseModel):
    """One time series: whose (``key``: node, GPU, job …), which metric, and its points
    as ``[epoch_seconds, value]`` (value None: not available then)."""

    key: dict[str, str | int]
    metric: str
    points: list[tuple[int, float | None]]


class SeriesList(BaseModel):
    """Series over [start, end] at one ``resolution``: ``raw`` (as sampled, about one
    point a second), ``1m`` or ``1h`` (averages; chosen by the span unless asked)."""

    resolution: Literal["raw", "1m", "1h"]
    start: datetime
    end: datetime
    series: list[SeriesOut]


class JobRef(BaseModel):
    """A job holding (part of) a GPU now."""

    id: int
    name: str
    project: str
    user: str
    rank: int = 0
    workers: int = 1  # > 1: a gang (``rank`` says which worker)
    share: str | None = None  # "0.5", "20GiB", "mig 1g.10gb"; None: whole GPUs


class GpuNow(BaseModel):
    """One GPU as `corral top` shows it: identity, holders, unmanaged use, newest sample."""

    index: int
    uuid: str
    model: str
    memory_bytes: int
    jobs: list[JobRef]
    unmanaged: str | None
    sample: GpuSample | None


class NodeNow(BaseModel):
    name: str
    state: str
    pool: str
    simulated: bool
    last_heartbeat: datetime | None
    sampled_at: datetime | None  # the newest sample's time (agent clock); None: none yet
    gpus: list[GpuNow]
    host: HostSample | None


class ClusterNow(BaseModel):
    """Every node with its newest sample: what `corral top` and `corral free` draw."""

    at: datetime
    nodes: list[NodeNow]


class NodeDiskUsage(BaseModel):
    """One user's usage of one scanned path on one node (latest completed scan)."""

    node: str
    path: str
    user: str
    used_bytes: int
    files: int
    scanned_at: datetime


class DiskUsageList(BaseModel):
    usage: list[NodeDiskUsage]
