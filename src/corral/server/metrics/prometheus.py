"""``/metrics`` in Prometheus' text format, with dcgm-exporter's names and labels.

GPU series use the names dcgm-exporter exports (``DCGM_FI_DEV_GPU_UTIL``,
``DCGM_FI_DEV_FB_USED`` in MiB, ``DCGM_FI_DEV_GPU_TEMP`` …) and its labels (``gpu``,
``UUID``, ``device``, ``modelName``, ``GPU_I_ID``, ``GPU_I_PROFILE``) so existing
dashboards and alerts work unchanged; the host label is ``hostname`` (dcgm-exporter
spells it ``Hostname``), and Corral adds ``job``, ``project`` and ``user`` (who holds
the GPU; several, comma-separated, when jobs share it) and ``simulated="true"`` on
simulated GPUs. A value a GPU cannot report is left out, never exported as 0.

Cluster series are Corral's own (``corral_*``): per project quota, fair share,
allocated GPUs and pending jobs; per node whether it is up; GPUs in use outside Corral.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from corral.core.telemetry import ClusterNow, GpuNow, GpuSample, NodeNow
from corral.scheduler import ProjectShare

MIB = 1024 * 1024

# (name, help, type, how to get the value from a GPU sample)
_GPU_GAUGES: tuple[tuple[str, str, str, str, float], ...] = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "gauge", "utilization_percent", 1.0),
    (
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "Memory utilization (in %).",
        "gauge",
        "memory_utilization_percent",
        1.0,
    ),
    (
        "DCGM_FI_DEV_FB_USED",
        "Framebuffer memory used (in MiB).",
        "gauge",
        "memory_used_bytes",
        1 / MIB,
    ),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "gauge", "temperature_celsius", 1.0),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "gauge", "power_watts", 1.0),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "Power limit (in W).", "gauge", "power_limit_watts", 1.0),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", "gauge", "sm_clock_mhz", 1.0),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", "gauge", "memory_clock_mhz", 1.0),
    (
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "Total number of single-bit volatile ECC errors.",
        "counter",
        "ecc_corrected_errors",
        1.0,
    ),
    (
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "Total number of double-bit volatile ECC errors.",
        "counter",
        "ecc_uncorrected_errors",
        1.0,
    ),
    (
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "The rate of data transmitted over the PCIe bus (in B/s).",
        "gauge",
        "pcie_tx_bytes_per_s",
        1.0,
    ),
    (
        "DCGM_FI_PROF_PCIE_RX_BYTES",
        "The rate of data received over the PCIe bus (in B/s).",
        "gauge",
        "pcie_rx_bytes_per_s",
        1.0,
    ),
    (
        "DCGM_FI_PROF_NVLINK_TX_BYTES",
        "The rate of data transmitted over NVLink (in B/s).",
        "gauge",
        "nvlink_tx_bytes_per_s",
        1.0,
    ),
    (
        "DCGM_FI_PROF_NVLINK_RX_BYTES",
        "The rate of data received over NVLink (in B/s).",
        "gauge",
        "nvlink_rx_bytes_per_s",
        1.0,
    ),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass
class _Family:
    name: str
    help: str
    type: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def render(self) -> Iterable[str]:
        if not self.samples:
            return
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.type}"
        for labels, value in self.samples:
            yield f"{self.name}{{{_labels(labels)}}} {_number(value)}"


class _Exposition:
    def __init__(self) -> None:
        self.families: dict[str, _Family] = {}

    def add(self, name: str, help_: str, type_: str, labels: dict[str, str], value: float) -> None:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = _Family(name, help_, type_)
        family.samples.append((labels, value))

    def text(self) -> str:
        lines = [line for f in self.families.values() for line in f.render()]
        return "\n".join(lines) + "\n"


def _gpu_labels(node: NodeNow, g: GpuNow) -> dict[str, str]:
    labels = {
        "gpu": str(g.index),
        "UUID": g.uuid,
        "device": f"nvidia{g.index}",
        "modelName": g.model,
        "hostname": node.name,
    }
    if g.jobs:
        labels["job"] = ",".join(sorted({j.name for j in g.jobs}))
        labels["project"] = ",".join(sorted({j.project for j in g.jobs}))
        labels["user"] = ",".join(sorted({j.user for j in g.jobs}))
    if node.simulated:
        labels["simulated"] = "true"
    return labels


def _add_gpu(out: _Exposition, labels: dict[str, str], sample: GpuSample) -> None:
    for name, help_, type_, attr, scale in _GPU_GAUGES:
        value = getattr(sample, attr)
        if value is not None:
            out.add(name, help_, type_, labels, float(value) * scale)
    if sample.memory_total_bytes is not None and sample.memory_used_bytes is not None:
        free = max(0, sample.memory_total_bytes - sample.memory_used_bytes)
        out.add(
            "DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", "gauge", labels, free / MIB
        )


def render(
    now: ClusterNow,
    shares: dict[str, ProjectShare],
    last_xid: dict[tuple[str, int], int],
) -> str:
    """The whole exposition: every GPU's newest sample, then Corral's cluster series."""
    out = _Exposition()
    for node in now.nodes:
        for g in node.gpus:
            labels = _gpu_labels(node, g)
            if g.sample is not None and g.sample.error is None:
                _add_gpu(out, labels, g.sample)
                for instance in g.sample.mig:
                    mig_labels = {
                        **labels,
                        "GPU_I_ID": instance.uuid,
                        "GPU_I_PROFILE": instance.profile or "",
                    }
                    if instance.memory_used_bytes is not None:
                        out.add(
                            "DCGM_FI_DEV_FB_USED",
                            "Framebuffer memory used (in MiB).",
                            "gauge",
                            mig_labels,
                            instance.memory_used_bytes / MIB,
                        )
            xid = last_xid.get((node.name, g.index))
            if xid is not None:
                out.add(
                    "DCGM_FI_DEV_XID_ERRORS",
                    "Value of the last XID error encountered.",
                    "gauge",
                    labels,
                    xid,
                )
            out.add(
                "corral_gpu_unmanaged",
                "1 when the GPU is used by work Corral did not start (not scheduled then).",
                "gauge",
                {
                    "hostname": node.name,
                    "gpu": str(g.index),
                    "UUID": g.uuid,
                },
                1.0 if g.unmanaged else 0.0,
            )
        out.add(
            "corral_node_up",
            "1 when the node is ready (heartbeats on time), else 0.",
            "gauge",
            {"hostname": node.name, "state": node.state, "pool": node.pool},
            1.0 if node.state == "ready" else 0.0,
        )
        if node.last_heartbeat is not None:
            out.add(
                "corral_node_last_heartbeat_seconds",
                "Time of the node's last heartbeat (seconds since the epoch).",
                "gauge",
                {"hostname": node.name},
                node.last_heartbeat.timestamp(),
            )
        if node.host is not None:
            for attr, name, help_ in (
                ("cpu_percent", "corral_node_cpu_percent", "Host CPU busy (in %)."),
                ("memory_used_bytes", "corral_node_memory_used_bytes", "Host memory used."),
                ("memory_total_bytes", "corral_node_memory_total_bytes", "Host memory."),
            ):
                value = getattr(node.host, attr)
                if value is not None:
                    out.add(name, help_, "gauge", {"hostname": node.name}, float(value))
    for project, share in sorted(shares.items()):
        labels = {"project": project}
        out.add("corral_project_quota_gpus", "Guaranteed GPUs.", "gauge", labels, share.quota)
        out.add(
            "corral_project_fair_share_gpus",
            "GPUs the project deserves now (quota plus its part of idle GPUs).",
            "gauge",
            labels,
            share.fair_share,
        )
        out.add(
            "corral_project_allocated_gpus",
            "GPUs held by its jobs.",
            "gauge",
            labels,
            share.allocated,
        )
        out.add(
            "corral_project_pending_jobs",
            "Jobs waiting in the queue.",
            "gauge",
            labels,
            share.pending,
        )
    return out.text()
