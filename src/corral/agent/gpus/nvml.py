"""Real NVIDIA GPUs through NVML (package ``nvidia-ml-py``, module ``pynvml``).

One long-lived NVML session per agent: without persistence mode each ``nvmlInit`` costs
about 1.5 s and wakes every GPU, and spawning ``nvidia-smi`` costs far more than an
in-process query. Each query below names the ``nvidia-smi --query-gpu`` field it equals,
so numbers can be checked against the tool admins already trust.

NVML failures are facts about the node, not crashes: a missing library or driver makes
a CPU-only node with the reason said plainly; one lost GPU is left out and named while
the others are still registered.

Sampling (`NvmlBackend.sample`) runs every second on every node, so it keeps its cost
low: handles, UUIDs and the MIG layout are found once (by `inventory`, refreshed on
each call to it), a query a GPU answers NOT_SUPPORTED is not asked again, and the
working variant of a versioned call is remembered. What a GPU cannot report is None,
never 0; a GPU that fails as a whole (GPU_IS_LOST) gets a sample with ``error`` set.

XID errors arrive as NVML events: a daemon thread waits on one event set registered
for ``nvmlEventTypeXidCriticalError`` on every GPU that accepts it, and queues them for
`NvmlBackend.xid_events`. NVML keeps no history, so events raised while the agent is
down are not seen here.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pynvml

from corral.agent.gpus.base import (
    GpuBackend,
    GpuInventory,
    NoGpuBackend,
    describe_models,
    merge_processes,
    plural,
)
from corral.core.schemas import GpuInfo, MigInstance
from corral.core.telemetry import MAX_PROCESSES, GpuProcess, GpuSample, MigSample, XidEvent

log = logging.getLogger(__name__)

# Why nvmlInit failed, in words an admin can act on.
_INIT_FAILURES: dict[int, str] = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "no NVIDIA GPU found (NVML: library not found)",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: (
        "no NVIDIA GPU found (NVML: the NVIDIA kernel driver is not loaded)"
    ),
    pynvml.NVML_ERROR_NO_PERMISSION: (
        "NVIDIA GPUs not usable (NVML: no permission to open /dev/nvidia*; run the agent "
        "as root or as a member of the group owning those devices)"
    ),
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "NVIDIA GPUs not usable (NVML: the NVML library and the loaded kernel driver are "
        "different versions, as after a driver upgrade without a reboot): the node needs "
        "a reboot"
    ),
}

# Errors meaning "this binding/driver pair has no such call or struct version": the
# caller falls back to the older call.
_OLDER_API = frozenset(
    {
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
    }
)


# Errors meaning "this GPU cannot report that": the field is None, and not asked again
# (until the next `inventory` call).
_UNAVAILABLE = frozenset(
    {
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        pynvml.NVML_ERROR_NO_PERMISSION,
        pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
    }
)

LOST_GPU_MESSAGE = (
    "GPU is lost (it fell off the bus, usually Xid 79; check the kernel log; the node "
    "likely needs a reboot)"
)


class NvmlUnavailable(Exception):
    """NVML could not be started; ``str(exc)`` says why in one line."""


def open_nvml() -> GpuBackend:
    """An NVML back-end, or a CPU-only one whose inventory says why NVML is unusable."""
    try:
        return NvmlBackend()
    except NvmlUnavailable as exc:
        return NoGpuBackend(str(exc))


class NvmlBackend:
    """The node's NVIDIA GPUs, read through one NVML session held until `close`.

    Raises `NvmlUnavailable` when ``nvmlInit`` fails (no library, no driver, no
    permission, driver/library version mismatch).
    """

    name = "nvml"
    simulated = False

    def __init__(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            code = _code(exc)
            raise NvmlUnavailable(
                _INIT_FAILURES.get(code, f"NVIDIA GPUs not usable (NVML failed to start: {exc})")
            ) from exc
        self._lock = threading.Lock()
        self._open = True
        self._gpus: list[_Gpu] | None = None  # what `sample` reads: the last inventory's GPUs
        self._xid = _XidWatcher.start()

    @property
    def xid_thread(self) -> threading.Thread | None:
        """The thread waiting for XID events (None when no GPU could be watched)."""
        return self._xid.thread if self._xid is not None else None

    def inventory(self) -> GpuInventory:
        """Query driver, CUDA version and every GPU now. One failing GPU never hides the rest."""
        with self._lock:
            self._check_open("inventory")
            driver = _optional_text(pynvml.nvmlSystemGetDriverVersion)  # nvidia-smi: driver_version
            cuda = _cuda_version()  # nvidia-smi: "CUDA Version" in its header
            try:
                count = int(pynvml.nvmlDeviceGetCount())  # nvidia-smi: count
            except pynvml.NVMLError as exc:
                self._gpus = []
                return GpuInventory(
                    backend="nvml",
                    simulated=False,
                    driver_version=driver,
                    cuda_version=cuda,
                    devices=(),
                    message=f"NVML could not count the GPUs ({exc}): registering a CPU-only node",
                )
            devices: list[GpuInfo] = []
            gpus: list[_Gpu] = []
            skipped: list[str] = []
            for index in range(count):
                try:
                    info, gpu = _device(index)
                except pynvml.NVMLError as exc:
                    skipped.append(_skip_reason(index, exc))
                else:
                    devices.append(info)
                    gpus.append(gpu)
            self._adopt(gpus)
        return GpuInventory(
            backend="nvml",
            simulated=False,
            driver_version=driver,
            cuda_version=cuda,
            devices=tuple(devices),
            message=_message(devices, skipped, driver, cuda),
        )

    def sample(self) -> tuple[GpuSample, ...]:
        """Every GPU of the last inventory now (taking one first if there was none)."""
        if self._gpus is None:
            self.inventory()
        with self._lock:
            self._check_open("sample")
            return tuple(_sample_gpu(gpu) for gpu in self._gpus or [])

    def xid_events(self) -> list[XidEvent]:
        return self._xid.drain() if self._xid is not None else []

    def close(self) -> None:
        with self._lock:
            if not self._open:
                return
            self._open = False
            if self._xid is not None:
                self._xid.stop()  # before nvmlShutdown: the thread is inside NVML
            # Shutting down anyway: an error here leaves nothing useful to do.
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()

    def _check_open(self, method: str) -> None:
        if not self._open:
            raise RuntimeError(f"NvmlBackend.{method}() called after close()")

    def _adopt(self, gpus: list[_Gpu]) -> None:
        """Sample ``gpus`` from now on, keeping the counters (for rates) of the same GPUs."""
        previous = {g.uuid: g for g in self._gpus or []}
        for gpu in gpus:
            old = previous.get(gpu.uuid)
            if old is not None:
                gpu.counters = old.counters
        self._gpus = gpus


def _device(index: int) -> tuple[GpuInfo, _Gpu]:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)  # nvidia-smi: index
    uuid = _text(pynvml.nvmlDeviceGetUUID(handle))  # nvidia-smi: uuid
    model = _text(pynvml.nvmlDeviceGetName(handle))  # nvidia-smi: name
    memory = _memory_total_bytes(handle)  # nvidia-smi: memory.total (MiB there, bytes here)
    instances = _mig_instances(handle)
    info = GpuInfo(
        index=index,
        uuid=uuid,
        model=model,
        memory_bytes=memory,
        mig=[instance for instance, _ in instances],
    )
    gpu = _Gpu(
        handle=handle,
        index=index,
        uuid=uuid,
        mig=[_Mig(handle=h, uuid=m.uuid, profile=m.profile) for m, h in instances],
    )
    return info, gpu


_MIG_PROFILE_RE = re.compile(r"MIG\s+(\d+g\.\d+gb(?:\+me)?)", re.IGNORECASE)


def _mig_instances(handle: Any) -> list[tuple[MigInstance, Any]]:
    """The GPU's MIG instances (with their device handles) when MIG mode is on
    (nvidia-smi -L lists the same)."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)  # nvidia-smi: mig.mode.current
    except pynvml.NVMLError as exc:
        if _code(exc) in _OLDER_API:
            return []  # this GPU (or driver) cannot do MIG
        raise
    if current != pynvml.NVML_DEVICE_MIG_ENABLE:
        return []
    found: list[tuple[MigInstance, Any]] = []
    for slot in range(int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except pynvml.NVMLError as exc:
            if _code(exc) == pynvml.NVML_ERROR_NOT_FOUND:
                continue  # an empty slot: instances need not be numbered without gaps
            raise
        slices, profile = _mig_profile(mig)
        instance = MigInstance(
            uuid=_text(pynvml.nvmlDeviceGetUUID(mig)),  # nvidia-smi -L: (UUID: MIG-…)
            profile=profile,
            gpu_instance_id=int(pynvml.nvmlDeviceGetGpuInstanceId(mig)),
            compute_instance_id=int(pynvml.nvmlDeviceGetComputeInstanceId(mig)),
            compute_slices=slices,
            memory_bytes=_memory_total_bytes(mig),
        )
        found.append((instance, mig))
    return found


def _mig_profile(mig: Any) -> tuple[int, str]:
    """(compute slices, profile name) of a MIG device handle.

    The device name ends in the profile NVIDIA uses everywhere ("… MIG 1g.10gb"); the
    attributes give the slice count. The profile's "10gb" is a marketing size (the
    instance reports 9856 MiB), so it is read from the name when there is one, and only
    estimated from the memory size otherwise.
    """
    attrs = pynvml.nvmlDeviceGetAttributes(mig)
    slices = int(attrs.gpuInstanceSliceCount)
    match = _MIG_PROFILE_RE.search(_text(pynvml.nvmlDeviceGetName(mig)))
    if match:
        return slices, match.group(1).lower()
    return slices, f"{slices}g.{math.ceil(int(attrs.memorySizeMB) / 1024)}gb"


def _memory_total_bytes(handle: Any) -> int:
    # v2 is right about "used" on drivers >= 510.39 (v1 counts reserved memory as used);
    # the total is the same in both, but asking v2 first keeps one code path for
    # monitoring later. Older drivers lack the v2 symbol or struct version.
    try:
        info = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    except pynvml.NVMLError as exc:
        if _code(exc) not in _OLDER_API:
            raise
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        except pynvml.NVMLError as exc_v1:
            if _code(exc_v1) != pynvml.NVML_ERROR_NOT_SUPPORTED:
                raise
            return 0  # unknown: said so in the inventory message, never guessed
    return int(info.total)


def _cuda_version() -> str | None:
    """The CUDA version the driver supports, ``12040`` → ``"12.4"``; None if unknown."""
    try:
        raw = pynvml.nvmlSystemGetCudaDriverVersion_v2()
    except pynvml.NVMLError as exc:
        if _code(exc) not in _OLDER_API:
            return None
        try:
            raw = pynvml.nvmlSystemGetCudaDriverVersion()
        except pynvml.NVMLError:
            return None
    value = int(raw)
    if value <= 0:
        return None
    return f"{value // 1000}.{value % 1000 // 10}"


def _skip_reason(index: int, exc: Exception) -> str:
    if _code(exc) == pynvml.NVML_ERROR_GPU_IS_LOST:
        return f"GPU {index} skipped: {LOST_GPU_MESSAGE}"
    return f"GPU {index} skipped: {exc}"


def _message(
    devices: list[GpuInfo], skipped: list[str], driver: str | None, cuda: str | None
) -> str:
    versions = f"driver {driver or 'unknown'}, CUDA {cuda or 'unknown'}"
    if devices:
        text = f"{plural(len(devices), 'NVIDIA GPU')} ({describe_models(devices)}), {versions}"
    else:
        text = f"NVML ({versions}) found no usable NVIDIA GPU: registering a CPU-only node"
    unknown_memory = [d.index for d in devices if d.memory_bytes == 0]
    if unknown_memory:
        text += f"; memory size unknown for GPU {', '.join(map(str, unknown_memory))}"
    if skipped:
        text += "; WARNING: " + "; ".join(skipped)
    return text


def _code(exc: BaseException) -> int:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else -1


def _text(value: bytes | str) -> str:
    """Older bindings return bytes, newer ones str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _optional_text(query: Any) -> str | None:
    try:
        return _text(query())
    except pynvml.NVMLError:
        return None


# ------------------------------------------------------------------ sampling


@dataclass(eq=False, kw_only=True)
class _Device:
    """A device handle (a GPU or a MIG instance) and what sampling learnt about it."""

    handle: Any
    unsupported: set[str] = field(default_factory=set)  # queries answered NOT_SUPPORTED
    variant: dict[str, int] = field(default_factory=dict)  # which call of a chain works


@dataclass(eq=False, kw_only=True)
class _Mig(_Device):
    uuid: str
    profile: str | None


@dataclass(eq=False, kw_only=True)
class _Gpu(_Device):
    index: int
    uuid: str
    mig: list[_Mig] = field(default_factory=list)
    nvlinks: int | None = None  # active NVLinks, counted on the first sample
    counters: dict[int, tuple[int, float]] = field(default_factory=dict)  # field → (value, s)


# One query: a pynvml function name and its arguments after the handle. Names, not the
# functions, so that the lookup happens at call time (and a binding without the name
# counts as a driver without the call). A chain lists a call and its older fallbacks.
_Call = tuple[str, tuple[Any, ...]]

_MEMORY: tuple[_Call, ...] = (
    ("nvmlDeviceGetMemoryInfo", (pynvml.nvmlMemory_v2,)),  # v2: "used" without reserved
    ("nvmlDeviceGetMemoryInfo", ()),
)
_TEMPERATURE: tuple[_Call, ...] = (
    ("nvmlDeviceGetTemperature", (pynvml.NVML_TEMPERATURE_GPU,)),  # deprecated in CUDA 13
    ("nvmlDeviceGetTemperatureV", (pynvml.NVML_TEMPERATURE_GPU,)),
)
_POWER_LIMIT: tuple[_Call, ...] = (
    ("nvmlDeviceGetEnforcedPowerLimit", ()),  # nvidia-smi: enforced.power.limit
    ("nvmlDeviceGetPowerManagementLimit", ()),  # nvidia-smi: power.limit
)
_CLOCK_EVENTS: tuple[_Call, ...] = (
    ("nvmlDeviceGetCurrentClocksEventReasons", ()),  # R535+
    ("nvmlDeviceGetCurrentClocksThrottleReasons", ()),  # its older name
)
_COMPUTE_PROCESSES: tuple[_Call, ...] = (
    ("nvmlDeviceGetComputeRunningProcesses_v3", ()),
    ("nvmlDeviceGetComputeRunningProcesses_v2", ()),
)
_GRAPHICS_PROCESSES: tuple[_Call, ...] = (
    ("nvmlDeviceGetGraphicsRunningProcesses_v3", ()),
    ("nvmlDeviceGetGraphicsRunningProcesses_v2", ()),
)

# Clock event ("throttle") reason bits, named as nvidia-smi's clocks_event_reasons.* fields.
_CLOCK_EVENT_NAMES: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)

_ALL_LINKS = 0xFFFFFFFF  # a field's scopeId meaning "the sum over every NVLink"
_PCIE_FIELDS = (
    (pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, 0),  # cumulative bytes (recent drivers)
    (pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES, 0),
)
_NVLINK_FIELDS = (
    (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, _ALL_LINKS),  # cumulative KiB
    (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, _ALL_LINKS),
)
_KIB = 1024
# c_nvmlValue_t is a union; the member to read depends on the value's declared type.
_VALUE_MEMBER = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}


def _read(device: _Device, key: str, *chain: _Call) -> Any:
    """The first call of ``chain`` the driver has, or None when the device cannot say.

    A call this driver or binding lacks falls through to the next (older) one, and the
    one that worked is remembered; NOT_SUPPORTED (and the like) is remembered too, so
    the next sample does not ask again. Other errors (GPU_IS_LOST, …) propagate.
    """
    if key in device.unsupported:
        return None
    for position in range(device.variant.get(key, 0), len(chain)):
        name, args = chain[position]
        function = getattr(pynvml, name, None)
        try:
            if function is None:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            value = function(device.handle, *args)
        except pynvml.NVMLError as exc:
            code = _code(exc)
            if position + 1 < len(chain) and code in _OLDER_API:
                continue
            if code in _UNAVAILABLE:
                device.unsupported.add(key)
                return None
            raise
        device.variant[key] = position
        return value
    return None


def _sample_gpu(gpu: _Gpu) -> GpuSample:
    try:
        return _read_gpu(gpu)
    except pynvml.NVMLError as exc:
        if _code(exc) == pynvml.NVML_ERROR_GPU_IS_LOST:
            error = LOST_GPU_MESSAGE
        elif _code(exc) == pynvml.NVML_ERROR_RESET_REQUIRED:
            error = "GPU needs a reset (NVML: reset required; drain it and reset or reboot)"
        else:
            error = f"NVML could not read this GPU: {exc}"
        return GpuSample(index=gpu.index, uuid=gpu.uuid, error=error[:500])


def _read_gpu(gpu: _Gpu) -> GpuSample:
    # nvidia-smi: utilization.gpu, utilization.memory (None on a GPU in MIG mode)
    utilization = _read(gpu, "utilization", ("nvmlDeviceGetUtilizationRates", ()))
    memory = _read(gpu, "memory", *_MEMORY)  # nvidia-smi: memory.used, memory.total
    temperature = _read(gpu, "temperature", *_TEMPERATURE)  # nvidia-smi: temperature.gpu
    power = _read(gpu, "power", ("nvmlDeviceGetPowerUsage", ()))  # nvidia-smi: power.draw
    power_limit = _read(gpu, "power_limit", *_POWER_LIMIT)
    sm_clock = _read(gpu, "sm_clock", ("nvmlDeviceGetClockInfo", (pynvml.NVML_CLOCK_SM,)))
    memory_clock = _read(  # nvidia-smi: clocks.sm, clocks.mem
        gpu, "memory_clock", ("nvmlDeviceGetClockInfo", (pynvml.NVML_CLOCK_MEM,))
    )
    reasons = _read(gpu, "clock_events", *_CLOCK_EVENTS)  # nvidia-smi: clocks_event_reasons.*
    # nvidia-smi: ecc.errors.corrected.volatile.total, ecc.errors.uncorrected.volatile.total
    # (since the driver loaded); None on GPUs without ECC or with ECC off.
    corrected = _read(
        gpu,
        "ecc_corrected",
        (
            "nvmlDeviceGetTotalEccErrors",
            (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC),
        ),
    )
    uncorrected = _read(
        gpu,
        "ecc_uncorrected",
        (
            "nvmlDeviceGetTotalEccErrors",
            (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC),
        ),
    )
    pcie_tx, pcie_rx, nvlink_tx, nvlink_rx = _throughput(gpu)
    mig = [_sample_mig(instance) for instance in gpu.mig]
    if gpu.mig:
        # In MIG mode the GPU's processes are its instances' (as nvidia-smi lists them).
        processes = merge_processes([p for instance in mig for p in instance.processes])
    else:
        processes = _processes(gpu)
    return GpuSample(
        index=gpu.index,
        uuid=gpu.uuid,
        utilization_percent=None if utilization is None else float(utilization.gpu),
        memory_utilization_percent=None if utilization is None else float(utilization.memory),
        memory_used_bytes=None if memory is None else int(memory.used),
        memory_total_bytes=None if memory is None else int(memory.total),
        temperature_celsius=None if temperature is None else float(temperature),
        power_watts=None if power is None else int(power) / 1000,  # mW → W
        power_limit_watts=None if power_limit is None else int(power_limit) / 1000,
        sm_clock_mhz=None if sm_clock is None else int(sm_clock),
        memory_clock_mhz=None if memory_clock is None else int(memory_clock),
        throttle_reasons=None if reasons is None else _clock_event_names(int(reasons)),
        ecc_corrected_errors=None if corrected is None else int(corrected),
        ecc_uncorrected_errors=None if uncorrected is None else int(uncorrected),
        pcie_tx_bytes_per_s=pcie_tx,
        pcie_rx_bytes_per_s=pcie_rx,
        nvlink_tx_bytes_per_s=nvlink_tx,
        nvlink_rx_bytes_per_s=nvlink_rx,
        processes=processes,
        mig=mig,
    )


def _sample_mig(instance: _Mig) -> MigSample:
    """One MIG instance: its memory and processes (NVML has no utilization for it)."""
    try:
        memory = _read(instance, "memory", *_MEMORY)
        processes = _processes(instance)
    except pynvml.NVMLError as exc:
        if _code(exc) in (pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED):
            raise
        # E.g. the instance was destroyed since the inventory: nothing to report.
        return MigSample(uuid=instance.uuid, profile=instance.profile)
    return MigSample(
        uuid=instance.uuid,
        profile=instance.profile,
        memory_used_bytes=None if memory is None else int(memory.used),
        memory_total_bytes=None if memory is None else int(memory.total),
        processes=processes,
    )


def _processes(device: _Device) -> list[GpuProcess]:
    """Compute and graphics processes (nvidia-smi --query-compute-apps=pid,used_memory),
    one entry per PID. The memory is None where the driver cannot tell it."""
    used: dict[int, int | None] = {}
    for key, chain in (("compute", _COMPUTE_PROCESSES), ("graphics", _GRAPHICS_PROCESSES)):
        for process in _read(device, key, *chain) or ():
            pid = int(process.pid)
            memory = process.usedGpuMemory
            memory = None if memory is None else int(memory)
            known = used.get(pid)
            used[pid] = memory if known is None else max(known, memory or 0)
    return [
        GpuProcess(pid=pid, used_memory_bytes=memory)
        for pid, memory in sorted(used.items())[:MAX_PROCESSES]
    ]


def _clock_event_names(mask: int) -> list[str]:
    names = [name for bit, name in _CLOCK_EVENT_NAMES if mask & bit]
    known = sum(bit for bit, _ in _CLOCK_EVENT_NAMES)
    names += [f"0x{bit:x}" for bit in (1 << n for n in range(64)) if mask & bit & ~known]
    return names[:32]


def _throughput(gpu: _Gpu) -> tuple[float | None, float | None, float | None, float | None]:
    """PCIe and NVLink (tx, rx) in bytes per second since the previous sample.

    Cumulative counters read in one batched ``nvmlDeviceGetFieldValues`` call
    (nvidia-smi has no --query-gpu field for them; ``nvidia-smi nvlink -gt d`` shows the
    NVLink counters). Drivers without the PCIe byte counters fall back to
    ``nvmlDeviceGetPcieThroughput`` (``nvidia-smi dmon -s t``: the last 20 ms, in KiB/s).
    A GPU without an active NVLink reports None for NVLink.
    """
    if gpu.nvlinks is None:
        gpu.nvlinks = _active_nvlinks(gpu.handle)
    wanted: list[tuple[int, int]] = []
    if "pcie_counters" not in gpu.unsupported:
        wanted += _PCIE_FIELDS
    if gpu.nvlinks and "nvlink_counters" not in gpu.unsupported:
        wanted += _NVLINK_FIELDS
    rates: dict[int, float | None] = {}
    if wanted and "field_values" not in gpu.unsupported:
        try:
            values = pynvml.nvmlDeviceGetFieldValues(gpu.handle, wanted)
        except pynvml.NVMLError as exc:
            if _code(exc) not in _UNAVAILABLE:
                raise
            gpu.unsupported.add("field_values")
            values = []
        for value in values:
            field_id = int(value.fieldId)
            is_pcie = field_id in (_PCIE_FIELDS[0][0], _PCIE_FIELDS[1][0])
            code = int(value.nvmlReturn)
            if code != pynvml.NVML_SUCCESS:
                if code in (pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED):
                    raise pynvml.NVMLError(code)
                gpu.unsupported.add("pcie_counters" if is_pcie else "nvlink_counters")
                continue
            count = int(getattr(value.value, _VALUE_MEMBER.get(int(value.valueType), "ullVal")))
            stamp = int(value.timestamp)  # µs since the epoch, when the driver read it
            at = stamp / 1e6 if stamp > 0 else time.monotonic()
            rates[field_id] = _rate(gpu, field_id, count * (1 if is_pcie else _KIB), at)
    if "pcie_counters" in gpu.unsupported or "field_values" in gpu.unsupported:
        return (
            _pcie_throughput(gpu, "pcie_tx", pynvml.NVML_PCIE_UTIL_TX_BYTES),
            _pcie_throughput(gpu, "pcie_rx", pynvml.NVML_PCIE_UTIL_RX_BYTES),
            rates.get(_NVLINK_FIELDS[0][0]),
            rates.get(_NVLINK_FIELDS[1][0]),
        )
    return (
        rates.get(_PCIE_FIELDS[0][0]),
        rates.get(_PCIE_FIELDS[1][0]),
        rates.get(_NVLINK_FIELDS[0][0]),
        rates.get(_NVLINK_FIELDS[1][0]),
    )


def _pcie_throughput(gpu: _Gpu, key: str, counter: int) -> float | None:
    kib_per_s = _read(gpu, key, ("nvmlDeviceGetPcieThroughput", (counter,)))
    return None if kib_per_s is None else float(int(kib_per_s) * _KIB)


def _rate(gpu: _Gpu, field_id: int, count: int, at: float) -> float | None:
    """The average rate since the previous reading; None for the first one or after the
    counter went back (a driver reload)."""
    previous = gpu.counters.get(field_id)
    gpu.counters[field_id] = (count, at)
    if previous is None or count < previous[0] or at <= previous[1]:
        return None
    return (count - previous[0]) / (at - previous[1])


def _active_nvlinks(handle: Any) -> int:
    """How many of the GPU's NVLinks are up (0 for a GPU without NVLink). Asked once."""
    active = 0
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
        try:
            state = pynvml.nvmlDeviceGetNvLinkState(handle, link)  # nvidia-smi nvlink -s
        except pynvml.NVMLError as exc:
            if _code(exc) in _UNAVAILABLE | {
                pynvml.NVML_ERROR_INVALID_ARGUMENT,
                pynvml.NVML_ERROR_NOT_FOUND,
            }:
                break  # past the GPU's last link, or no NVLink at all
            raise
        if state == pynvml.NVML_FEATURE_ENABLED:
            active += 1
    return active


# ------------------------------------------------------------------ XID events

XID_WAIT_MS = 500  # how long one wait blocks: `close` stops the thread within about this
MAX_QUEUED_XIDS = 1000  # undrained events beyond this drop the oldest (MetricsBatch's cap)
_NO_INSTANCE = 0xFFFFFFFF

# What the common XIDs mean (NVIDIA's "XID Errors" catalogue), for the event's message.
XID_MEANINGS: dict[int, str] = {
    13: "graphics engine exception (usually an application error)",
    31: "GPU memory page fault (usually an application error)",
    32: "invalid or corrupted push buffer stream",
    43: "GPU stopped processing (an application fault)",
    45: "preemptive cleanup, due to previous errors",
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint/warning",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping recorded",
    64: "ECC page retirement or row remapping failed",
    69: "graphics engine class error",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}


def xid_message(xid: int, gpu_instance_id: int | None = None) -> str:
    """``"Xid 79: GPU has fallen off the bus"``, naming the MIG GPU instance if any."""
    meaning = XID_MEANINGS.get(xid)
    text = f"Xid {xid}: {meaning}" if meaning else f"Xid {xid}"
    if gpu_instance_id is not None:
        text += f" (MIG GPU instance {gpu_instance_id})"
    return text


class _XidWatcher:
    """One NVML event set for XID errors and the daemon thread that waits on it.

    Built by `start` (registration happens before it returns, so no event raised after
    the back-end exists is missed); `stop` ends the thread within about `XID_WAIT_MS`
    and frees the set.
    """

    def __init__(self, event_set: Any, gpus: dict[Any, tuple[int, str]]) -> None:
        self._set = event_set
        self._gpus = gpus  # handle key → (index, uuid)
        self._queue: deque[XidEvent] = deque(maxlen=MAX_QUEUED_XIDS)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="corral-nvml-xid", daemon=True)

    @classmethod
    def start(cls) -> _XidWatcher | None:
        """Register every GPU that accepts XID events; None when none does (said in the log)."""
        try:
            event_set = pynvml.nvmlEventSetCreate()
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as exc:
            log.warning("XID errors will not be reported: NVML has no event set (%s)", exc)
            return None
        watched: dict[Any, tuple[int, str]] = {}
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
                supported = int(pynvml.nvmlDeviceGetSupportedEventTypes(handle))
                if not supported & pynvml.nvmlEventTypeXidCriticalError:
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
                pynvml.nvmlDeviceRegisterEvents(
                    handle, pynvml.nvmlEventTypeXidCriticalError, event_set
                )
            except pynvml.NVMLError as exc:
                log.warning("XID errors of GPU %d will not be reported: %s", index, exc)
                continue
            watched[_handle_key(handle)] = (index, uuid)
        if not watched:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlEventSetFree(event_set)
            return None
        watcher = cls(event_set, watched)
        watcher.thread.start()
        return watcher

    def drain(self) -> list[XidEvent]:
        events: list[XidEvent] = []
        with contextlib.suppress(IndexError):
            while True:
                events.append(self._queue.popleft())
        return events

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=XID_WAIT_MS / 1000 * 4)
        if self.thread.is_alive():
            log.warning("the XID event thread did not stop within %.1f s", XID_WAIT_MS / 250)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    data = pynvml.nvmlEventSetWait_v2(self._set, XID_WAIT_MS)
                except pynvml.NVMLError as exc:
                    code = _code(exc)
                    if code == pynvml.NVML_ERROR_TIMEOUT:
                        continue
                    if code == pynvml.NVML_ERROR_UNINITIALIZED:
                        return  # NVML was shut down under us
                    # E.g. a GPU of the set was lost: wait before asking again, not spin.
                    self._stop.wait(XID_WAIT_MS / 1000)
                    continue
                self._deliver(data)
        except Exception:  # a thread has no caller to tell: log, and stop watching
            log.exception("the XID event thread failed; XID errors will not be reported")
        finally:
            with contextlib.suppress(Exception):
                pynvml.nvmlEventSetFree(self._set)

    def _deliver(self, data: Any) -> None:
        if not int(data.eventType) & pynvml.nvmlEventTypeXidCriticalError:
            return
        where = self._gpus.get(_handle_key(data.device))
        if where is None:
            log.warning("an XID event came from a GPU that is not watched; dropped")
            return
        index, uuid = where
        xid = int(data.eventData)
        instance = int(getattr(data, "gpuInstanceId", _NO_INSTANCE))
        self._queue.append(
            XidEvent(
                at=datetime.now(UTC),
                gpu_index=index,
                uuid=uuid,
                xid=xid,
                message=xid_message(xid, None if instance == _NO_INSTANCE else instance),
            )
        )


def _handle_key(handle: Any) -> Any:
    """What identifies a device handle: the address a ctypes handle points to (the event
    carries a new pointer object to the same device), or the handle itself (fakes)."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return handle
