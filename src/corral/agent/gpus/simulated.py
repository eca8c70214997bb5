"""Simulated GPUs for machines without any: development, tests and demos.

A profile ``NxMODEL`` (``8xA100-80GB``, ``4xRTX4090``) gives N devices that look like the
real thing (names as ``nvidia-smi`` prints them, UUIDs in NVIDIA's format) but are
labelled simulated everywhere: in the inventory, on every device, and in the message the
agent prints. Nothing runs on them; jobs get ``CORRAL_GPUS_SIMULATED=1``.

A MIG layout may follow: ``8xH100-80GB,mig=0-1:1g.10gb*7/2:3g.40gb*2`` puts seven
1g.10gb instances on GPUs 0 and 1 and two 3g.40gb on GPU 2 (``all:`` for every GPU).

Monitoring samples are driven by the processes really running on this machine that say
they use one of this node's simulated GPUs. A process counts when its environment has

``CUDA_VISIBLE_DEVICES``
    naming GPUs of this node: indices (``0,3``), ``GPU-…`` UUIDs, or ``MIG-…`` UUIDs of
    its MIG instances (what Corral gives a job);
and either ``CORRAL_NODE=<node>``
    which every Corral job on the node has;
or ``CORRAL_SIM_NODE=<node>``
    for a process started by hand, outside Corral, e.g.
    ``CORRAL_SIM_NODE=node-1 CUDA_VISIBLE_DEVICES=0 CORRAL_SIM_LOAD=util:90 sleep 600``.

``CORRAL_SIM_LOAD=util:80,mem:20GiB``
    the load the process puts on each GPU (or instance) it names: ``util`` in percent
    (0-100, default 50) and ``mem`` in bytes with an optional unit (B, KB, MB, GB, TB,
    KiB, MiB, GiB, TiB; default 2GiB), capped to the device's memory. Either part may be
    left out; a part that cannot be read takes its default. A process naming several
    devices puts this load on each.

From that, deterministically for a given set of processes:

- a GPU's utilization is the sum of its processes' ``util``, capped at 100; memory
  utilization is half of it; memory used is the processes' ``mem`` plus 4 MiB the
  driver keeps (plus its MIG instances' memory used), capped at the GPU's memory;
- temperature rises from 32 °C idle to 75 °C at full load, power from the model's idle
  draw to 90 % of its power limit, the SM clock from 210 MHz idle to the model's boost
  clock (the memory clock is the model's); an idle GPU reports the ``gpu_idle`` clock
  event reason;
- PCIe traffic is 2 GiB/s received and 0.5 GiB/s sent at full load, NVLink 20 GiB/s each
  way on models with NVLink (None on the others); ECC counts are 0 (None on GeForce
  boards, which have no ECC);
- a MIG instance's memory used is its processes' ``mem`` plus 4 MiB, capped at its size;
  as on real hardware, neither an instance nor a GPU in MIG mode reports utilization
  (None), and the GPU's load (for its temperature, power and clocks) is each instance's
  capped ``util`` weighted by its share of the 7 compute slices.

A process whose parent carries the same GPU variables is part of its parent's load (a
forked worker, or the program a wrapper shell started) and is not counted again. The
environment is read once per process (from ``/proc/<pid>/environ``, cached by PID and
start time); processes whose environment cannot be read are skipped.

A process whose ``CORRAL_SIM_LOAD`` differs from its parent's counts on its own, on top
of its parent's load. That is how a job's memory grows over time (to test the GPU
memory watchdog, `corral.agent.gpushare`): a job submitted with
``-e CORRAL_SIM_LOAD=mem:10GiB`` whose command is
``sh -c 'sleep 5; CORRAL_SIM_LOAD=mem:40GiB sleep 600 & wait'`` uses 10 GiB, then
50 GiB from its sixth second on. Start the bigger load as a new process: ``exec``
keeps the PID, whose environment is not read again.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.agent.gpus.base import GIB, GpuInventory, describe_models, merge_processes, plural
from corral.agent.hostmetrics import read_small
from corral.core.schemas import GpuInfo, MigInstance
from corral.core.telemetry import GpuProcess, GpuSample, MigSample, XidEvent

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


@dataclass(frozen=True)
class ModelSpec:
    """What a model's samples are derived from (figures of the real boards)."""

    power_limit_watts: float
    idle_watts: float
    boost_sm_mhz: int
    memory_mhz: int
    ecc: bool
    nvlink: bool


SPECS: dict[str, ModelSpec] = {
    "A100-80GB": ModelSpec(400, 60, 1410, 1593, ecc=True, nvlink=True),
    "A100-40GB": ModelSpec(400, 55, 1410, 1215, ecc=True, nvlink=True),
    "H100-80GB": ModelSpec(700, 75, 1980, 2619, ecc=True, nvlink=True),
    "H200-141GB": ModelSpec(700, 80, 1980, 3201, ecc=True, nvlink=True),
    "L40S": ModelSpec(350, 35, 2520, 9001, ecc=True, nvlink=False),
    "L4": ModelSpec(72, 16, 2040, 6251, ecc=True, nvlink=False),
    "A10": ModelSpec(150, 21, 1695, 6251, ecc=True, nvlink=False),
    "T4": ModelSpec(70, 10, 1590, 5001, ecc=True, nvlink=False),
    "V100-32GB": ModelSpec(300, 40, 1530, 877, ecc=True, nvlink=True),
    "V100-16GB": ModelSpec(300, 40, 1530, 877, ecc=True, nvlink=True),
    "RTX4090": ModelSpec(450, 20, 2520, 10501, ecc=False, nvlink=False),
    "RTX3090": ModelSpec(350, 25, 1695, 9751, ecc=False, nvlink=False),
}

# The load a process declares when CORRAL_SIM_LOAD leaves a part out.
DEFAULT_UTIL_PERCENT = 50.0
DEFAULT_MEMORY_BYTES = 2 * GIB
IDLE_MEMORY_BYTES = 4 * 1024**2  # what the driver keeps on an idle device
IDLE_CELSIUS, FULL_LOAD_CELSIUS = 32.0, 75.0
IDLE_SM_MHZ = 210
FULL_LOAD_POWER_SHARE = 0.9  # of the power limit
FULL_LOAD_PCIE_RX, FULL_LOAD_PCIE_TX = 2.0 * GIB, 0.5 * GIB  # bytes/s
FULL_LOAD_NVLINK = 20.0 * GIB  # bytes/s each way
MIG_SLICES = 7

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

    Samples are driven by this machine's processes (see the module's doc), read under
    ``proc_root``. Raises `ValueError` for a profile it does not understand.
    """

    name = "simulated"
    simulated = True

    def __init__(
        self,
        profile: str,
        node_name: str,
        proc_root: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        count, model, mig_spec = _parse(profile)
        layout = parse_mig(mig_spec, count, model) if mig_spec else {}
        full_name, memory_bytes = MODELS[model]
        self.node_name = node_name
        self._spec = SPECS[model]
        self._processes = _ProcessTable(str(proc_root), clock)
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
        # What CUDA_VISIBLE_DEVICES may name: "3", "GPU-…" and "MIG-…" → (GPU, slot).
        self._targets: dict[str, _Target] = {}
        for device in self._devices:
            self._targets[str(device.index)] = (device.index, None)
            self._targets[device.uuid] = (device.index, None)
            for slot, instance in enumerate(device.mig):
                self._targets[instance.uuid] = (device.index, slot)

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

    def sample(self) -> tuple[GpuSample, ...]:
        """Every simulated GPU, loaded by the processes that use it now."""
        loads = self._processes.scan(self._parse_environment)
        on_gpu: dict[int, list[_Use]] = {}
        on_mig: dict[tuple[int, int], list[_Use]] = {}
        for pid, load in loads:
            for gpu, slot in load.targets:
                use = _Use(pid, load.util, load.memory)
                if slot is None:
                    on_gpu.setdefault(gpu, []).append(use)
                else:
                    on_mig.setdefault((gpu, slot), []).append(use)
        return tuple(self._sample(device, on_gpu, on_mig) for device in self._devices)

    def xid_events(self) -> list[XidEvent]:
        return []  # simulated GPUs do not fail

    def close(self) -> None:
        pass

    def _sample(
        self,
        device: GpuInfo,
        on_gpu: dict[int, list[_Use]],
        on_mig: dict[tuple[int, int], list[_Use]],
    ) -> GpuSample:
        spec = self._spec
        total = device.memory_bytes
        direct = on_gpu.get(device.index, [])
        util = min(100.0, sum(u.util for u in direct))
        used = IDLE_MEMORY_BYTES + sum(min(u.memory, total) for u in direct)
        processes = [GpuProcess(pid=u.pid, used_memory_bytes=min(u.memory, total)) for u in direct]
        migs: list[MigSample] = []
        load = util
        for slot, instance in enumerate(device.mig):
            uses = on_mig.get((device.index, slot), [])
            size = instance.memory_bytes
            mig_used = min(size, IDLE_MEMORY_BYTES + sum(min(u.memory, size) for u in uses))
            mig_processes = merge_processes(
                [GpuProcess(pid=u.pid, used_memory_bytes=min(u.memory, size)) for u in uses]
            )
            migs.append(
                MigSample(
                    uuid=instance.uuid,
                    profile=instance.profile,
                    memory_used_bytes=mig_used,
                    memory_total_bytes=size,
                    processes=mig_processes,
                )
            )
            used += mig_used
            processes += mig_processes
            instance_util = min(100.0, sum(u.util for u in uses))
            load += instance_util * instance.compute_slices / MIG_SLICES
        load = min(100.0, load)
        share = load / 100
        return GpuSample(
            index=device.index,
            uuid=device.uuid,
            # A GPU in MIG mode reports no utilization, as real ones do.
            utilization_percent=None if device.mig else util,
            memory_utilization_percent=None if device.mig else util / 2,
            memory_used_bytes=min(total, used),
            memory_total_bytes=total,
            temperature_celsius=round(IDLE_CELSIUS + (FULL_LOAD_CELSIUS - IDLE_CELSIUS) * share, 1),
            power_watts=round(
                spec.idle_watts
                + (spec.power_limit_watts * FULL_LOAD_POWER_SHARE - spec.idle_watts) * share,
                1,
            ),
            power_limit_watts=spec.power_limit_watts,
            sm_clock_mhz=IDLE_SM_MHZ + round((spec.boost_sm_mhz - IDLE_SM_MHZ) * share),
            memory_clock_mhz=spec.memory_mhz,
            throttle_reasons=["gpu_idle"] if load == 0 else [],
            ecc_corrected_errors=0 if spec.ecc else None,
            ecc_uncorrected_errors=0 if spec.ecc else None,
            pcie_tx_bytes_per_s=FULL_LOAD_PCIE_TX * share,
            pcie_rx_bytes_per_s=FULL_LOAD_PCIE_RX * share,
            nvlink_tx_bytes_per_s=FULL_LOAD_NVLINK * share if spec.nvlink else None,
            nvlink_rx_bytes_per_s=FULL_LOAD_NVLINK * share if spec.nvlink else None,
            processes=merge_processes(processes),
            mig=migs,
        )

    def _parse_environment(self, environ: bytes) -> _Load | None:
        """The load a process puts on this node's GPUs, from its environment; None when
        it uses none of them."""
        env: dict[bytes, bytes] = {}
        for entry in environ.split(b"\0"):
            key, sep, value = entry.partition(b"=")
            if sep and key in _WANTED:
                env[key] = value
        devices = env.get(b"CUDA_VISIBLE_DEVICES")
        node = self.node_name.encode()
        if not devices or node not in (env.get(b"CORRAL_NODE"), env.get(b"CORRAL_SIM_NODE")):
            return None
        targets: list[_Target] = []
        for name in devices.decode("utf-8", "replace").split(","):
            target = self._targets.get(name.strip())
            if target is not None and target not in targets:
                targets.append(target)
        if not targets:
            return None
        util, memory = parse_load(env.get(b"CORRAL_SIM_LOAD", b"").decode("utf-8", "replace"))
        return _Load(tuple(targets), util, memory)


# ------------------------------------------------------------------ process-driven load

_WANTED = frozenset(
    {b"CUDA_VISIBLE_DEVICES", b"CORRAL_NODE", b"CORRAL_SIM_NODE", b"CORRAL_SIM_LOAD"}
)
_Target = tuple[int, int | None]  # (GPU index, MIG slot or None for the whole GPU)
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$")
_PERCENT_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*%?$")


@dataclass(frozen=True)
class _Load:
    """What one process declares: the devices it uses and its load on each."""

    targets: tuple[_Target, ...]
    util: float
    memory: int


@dataclass(frozen=True)
class _Use:
    pid: int
    util: float
    memory: int


def parse_load(text: str) -> tuple[float, int]:
    """``"util:80,mem:20GiB"`` → ``(80.0, 20 GiB)``; a missing or unreadable part takes
    its default (util 50, mem 2 GiB). Utilization is capped to 0-100."""
    util, memory = DEFAULT_UTIL_PERCENT, DEFAULT_MEMORY_BYTES
    for part in text.split(","):
        key, _, value = part.partition(":")
        key, value = key.strip().lower(), value.strip().lower()
        if key == "util" and (match := _PERCENT_RE.match(value)):
            util = min(100.0, float(match.group(1)))
        elif key == "mem" and (match := _SIZE_RE.match(value)) and match.group(2) in _UNITS:
            memory = int(float(match.group(1)) * _UNITS[match.group(2)])
    return util, memory


class _ProcessTable:
    """The processes under a /proc tree and what each declares, read once per process.

    Each scan lists the PIDs; a PID not seen before has its ``stat`` (start time, which
    tells a reused PID from the process that had it, and parent) and its environment
    read. A known PID's ``stat`` is read again only every `RECHECK_SECONDS`: a process
    that ended leaves the listing at once, and a PID reused within those seconds is rare
    enough for a simulation. With ~300 processes a scan is a directory listing.
    """

    RECHECK_SECONDS = 10.0

    def __init__(self, root: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._root = root
        self._clock = clock
        # pid → (start time, parent, load, when its stat was last read)
        self._cache: dict[int, tuple[int, int, _Load | None, float]] = {}

    def scan(self, parse: Callable[[bytes], _Load | None]) -> list[tuple[int, _Load]]:
        """(pid, load) of every process using the node's GPUs, by PID."""
        now = self._clock()
        seen: dict[int, tuple[int, int, _Load | None, float]] = {}
        try:
            entries = os.scandir(self._root)
        except OSError:
            return []
        with entries:
            for entry in entries:
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                cached = self._cache.get(pid)
                if cached is not None and now - cached[3] < self.RECHECK_SECONDS:
                    seen[pid] = cached
                    continue
                stat = _read_stat(f"{self._root}/{pid}/stat")
                if stat is None:
                    continue  # it ended meanwhile
                parent, start = stat
                if cached is not None and cached[0] == start:
                    load = cached[2]
                else:
                    environ = read_small(f"{self._root}/{pid}/environ")
                    load = None if environ is None else parse(environ)
                seen[pid] = (start, parent, load, now)
        self._cache = seen  # forget the processes that ended
        loads = {pid: entry[2] for pid, entry in seen.items() if entry[2] is not None}
        return [
            (pid, load)
            for pid, load in sorted(loads.items())
            if loads.get(seen[pid][1]) != load  # a child of a process with the same load
        ]


def _read_stat(path: str) -> tuple[int, int] | None:
    """(parent PID, start time in clock ticks) from /proc/<pid>/stat, or None."""
    raw = read_small(path)
    if raw is None:
        return None
    # "pid (comm) state ppid … starttime …": comm may hold spaces and parentheses.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None
