"""A fake NVML at the ``pynvml`` boundary, driven by whole-machine fixtures.

Like gpustat's tests, it replaces functions of the real ``pynvml`` module (so the code
under test imports and calls ``pynvml`` exactly as in production) and raises the real
``pynvml.NVMLError`` subclasses. Calls made before ``nvmlInit`` or after ``nvmlShutdown``
raise ``Uninitialized``, as the library does, so a back-end that forgets to hold its
session open fails here too.

What it reproduces of real drivers: NOT_SUPPORTED per query (``FakeGpu.fail``: GeForce
boards have no ECC, a vGPU guest no power readings), calls an older driver lacks
(FUNCTION_NOT_FOUND), a GPU in MIG mode (no utilization; memory and processes per
instance), a GPU falling off the bus (``lost_after``: GPU_IS_LOST from then on, with an
Xid 79 event), running processes, cumulative PCIe/NVLink counters read through
``nvmlDeviceGetFieldValues`` (rates follow ``FakeNvml.clock``), and XID events
(`FakeNvml.emit_xid`) delivered to the event sets that registered the GPU.

Usage::

    fake = install(monkeypatch, a100_8x())
    backend = open_backend(None, "node-1")
    assert fake.init_calls == 1
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml
import pytest

GIB = 1024**3
MIB = 1024**2
NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId/computeInstanceId of a process outside MIG
ALL_LINKS = 0xFFFFFFFF
XID_EVENTS = pynvml.nvmlEventTypeXidCriticalError
# What a current data-centre GPU accepts (XID, ECC, clock and power-state events).
DEFAULT_EVENTS = (
    pynvml.nvmlEventTypeXidCriticalError
    | pynvml.nvmlEventTypeSingleBitEccError
    | pynvml.nvmlEventTypeDoubleBitEccError
    | pynvml.nvmlEventTypePState
    | pynvml.nvmlEventTypeClock
)


@dataclass
class FakeProcess:
    """A process with a context on a GPU (or MIG instance). ``used_memory`` None is
    NVML's NVML_VALUE_NOT_AVAILABLE (the binding turns it into None)."""

    pid: int
    used_memory: int | None


@dataclass
class FakeMig:
    """One MIG instance: what NVML reports through its MIG device handle."""

    uuid: str
    profile: str  # "1g.10gb"
    gpu_instance_id: int
    compute_instance_id: int
    slices: int
    memory_total: int
    memory_used: int = 0
    processes: list[FakeProcess] = field(default_factory=list)


@dataclass
class FakeGpu:
    """One GPU of a fake machine. ``fail`` maps a pynvml function name to the NVML error
    code it raises for this GPU (e.g. ``{"nvmlDeviceGetUUID": NVML_ERROR_GPU_IS_LOST}``,
    ``{"nvmlDeviceGetTotalEccErrors": NVML_ERROR_NOT_SUPPORTED}``); the v2 memory call
    is ``"nvmlDeviceGetMemoryInfo_v2"``, a field of ``nvmlDeviceGetFieldValues`` is
    ``"field:<id>"`` (its per-field return code).

    ``mig_mode`` is NVML's current MIG mode (None: the GPU cannot do MIG and the query is
    NOT_SUPPORTED); ``mig`` lists the MIG device slots, None for an empty slot (NVML
    answers NOT_FOUND there, as it does for gaps left by destroyed instances).

    ``lost_after``: the GPU falls off the bus after this many more device calls (the
    event-registration calls aside): every call on it is GPU_IS_LOST from then on, and
    an Xid 79 event is raised, as the driver does. 0 means lost already.

    Rates (``pcie_*``, ``nvlink_*``, bytes per second) drive cumulative counters that
    grow with `FakeNvml.clock`.
    """

    name: str
    uuid: str
    memory_total: int
    memory_used: int = 0
    fail: dict[str, int] = field(default_factory=dict)
    mig_mode: int | None = None
    mig: list[FakeMig | None] = field(default_factory=list)
    # nvidia-smi: utilization.gpu, utilization.memory, temperature.gpu
    utilization_gpu: int = 0
    utilization_memory: int = 0
    temperature: int = 34
    power_usage_mw: int = 62_000  # power.draw
    power_limit_mw: int = 400_000  # enforced.power.limit
    sm_clock_mhz: int = 210
    memory_clock_mhz: int = 1593
    clock_event_reasons: int = pynvml.nvmlClocksEventReasonGpuIdle
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    pcie_tx_bytes_per_s: float = 0.0
    pcie_rx_bytes_per_s: float = 0.0
    nvlinks: int = 0  # active NVLinks (0: the GPU has none and NVLink queries are NOT_SUPPORTED)
    nvlink_tx_bytes_per_s: float = 0.0
    nvlink_rx_bytes_per_s: float = 0.0
    processes: list[FakeProcess] = field(default_factory=list)  # compute
    graphics_processes: list[FakeProcess] = field(default_factory=list)
    supported_events: int = DEFAULT_EVENTS
    lost_after: int | None = None


@dataclass
class FakeMachine:
    """A whole machine as NVML would describe it."""

    gpus: list[FakeGpu]
    driver_version: str = "550.54.15"
    cuda_version: int = 12040
    init_error: int | None = None
    # Functions this driver/binding generation lacks or refuses, with the error they raise
    # (system-wide; per-GPU failures live on FakeGpu.fail).
    fail: dict[str, int] = field(default_factory=dict)
    # Bindings before nvidia-ml-py 11.515 returned bytes rather than str.
    strings_as_bytes: bool = False


@dataclass(frozen=True)
class FakeHandle:
    index: int
    mig: int | None = None  # the MIG device slot, for MIG device handles


@dataclass(eq=False)
class FakeEventSet:
    """An ``nvmlEventSet_t``: the GPUs registered on it and the events not yet read."""

    registered: dict[int, int] = field(default_factory=dict)  # GPU index → event mask
    pending: list[SimpleNamespace] = field(default_factory=list)
    freed: bool = False


class FakeNvml:
    """The fake library state for one machine; counts init/shutdown calls."""

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine
        self.init_calls = 0
        self.shutdown_calls = 0
        self.initialized = False
        self.calls: list[str] = []
        # Seconds since the epoch; counters and field timestamps follow it. Tests may
        # replace it with a manual clock for exact rates.
        self.clock: Callable[[], float] = time.time
        self._epoch = self.clock()
        self.event_sets: list[FakeEventSet] = []
        self._events = threading.Condition()
        self._device_calls: dict[int, int] = {}  # id(FakeGpu) → calls counted for lost_after

    # ----------------------------------------------------------- helpers

    def _enter(self, func: str, gpu: FakeGpu | None = None) -> None:
        self.calls.append(func)
        if not self.initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if gpu is not None and gpu.lost_after is not None and "Event" not in func:
            calls = self._device_calls[id(gpu)] = self._device_calls.get(id(gpu), 0) + 1
            if calls == gpu.lost_after + 1:  # it falls off the bus now
                index = next(i for i, g in enumerate(self.machine.gpus) if g is gpu)
                self.emit_xid(index, 79)
            if calls > gpu.lost_after:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        code = (gpu.fail if gpu is not None else {}).get(func, self.machine.fail.get(func))
        if code is not None:
            raise pynvml.NVMLError(code)

    def _check_mig_handle(self, handle: FakeHandle) -> None:
        """Queries a MIG device handle does not answer (only memory, processes, ids do)."""
        if handle.mig is not None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def _counter(self, rate: float, unit: int = 1) -> int:
        return int(rate * (self.clock() - self._epoch) / unit)

    # ----------------------------------------------------------- test controls

    def emit_xid(self, index: int, xid: int, gpu_instance_id: int = NO_INSTANCE) -> int:
        """The driver reports Xid ``xid`` on GPU ``index``: every live event set where the
        GPU is registered for XID events gets it. Returns how many sets did."""
        event = SimpleNamespace(
            device=FakeHandle(index),
            eventType=XID_EVENTS,
            eventData=xid,
            gpuInstanceId=gpu_instance_id,
            computeInstanceId=NO_INSTANCE if gpu_instance_id == NO_INSTANCE else 0,
        )
        delivered = 0
        with self._events:
            for event_set in self.event_sets:
                if not event_set.freed and event_set.registered.get(index, 0) & XID_EVENTS:
                    event_set.pending.append(event)
                    delivered += 1
            self._events.notify_all()
        return delivered

    @property
    def live_event_sets(self) -> list[FakeEventSet]:
        return [s for s in self.event_sets if not s.freed]

    def _gpu(self, handle: FakeHandle) -> FakeGpu:
        return self.machine.gpus[handle.index]

    def _mig(self, handle: FakeHandle) -> FakeMig | None:
        if handle.mig is None:
            return None
        mig = self._gpu(handle).mig[handle.mig]
        assert mig is not None
        return mig

    def _str(self, value: str) -> str | bytes:
        return value.encode() if self.machine.strings_as_bytes else value

    # ----------------------------------------------------------- the pynvml API

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.machine.init_error is not None:
            raise pynvml.NVMLError(self.machine.init_error)
        self.init_calls += 1
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.shutdown_calls += 1
        self.initialized = False

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._enter("nvmlSystemGetDriverVersion")
        return self._str(self.machine.driver_version)

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.machine.cuda_version

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion_v2")
        return self.machine.cuda_version

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.machine.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        if not 0 <= index < len(self.machine.gpus):
            self._enter("nvmlDeviceGetHandleByIndex")
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._enter("nvmlDeviceGetHandleByIndex", self.machine.gpus[index])
        return FakeHandle(index)

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str | bytes:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetUUID", gpu)
        mig = self._mig(handle)
        return self._str(mig.uuid if mig else gpu.uuid)

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str | bytes:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetName", gpu)
        mig = self._mig(handle)
        return self._str(f"{gpu.name} MIG {mig.profile}" if mig else gpu.name)

    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetMigMode", gpu)
        if gpu.mig_mode is None or handle.mig is not None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeHandle) -> int:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetMaxMigDeviceCount", gpu)
        return 7 if gpu.mig_mode is not None else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeHandle, index: int) -> FakeHandle:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetMigDeviceHandleByIndex", gpu)
        if gpu.mig_mode != pynvml.NVML_DEVICE_MIG_ENABLE:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(gpu.mig) or gpu.mig[index] is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return FakeHandle(handle.index, index)

    def nvmlDeviceGetGpuInstanceId(self, handle: FakeHandle) -> int:
        self._enter("nvmlDeviceGetGpuInstanceId", self._gpu(handle))
        mig = self._mig(handle)
        if mig is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return mig.gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, handle: FakeHandle) -> int:
        self._enter("nvmlDeviceGetComputeInstanceId", self._gpu(handle))
        mig = self._mig(handle)
        if mig is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return mig.compute_instance_id

    def nvmlDeviceGetAttributes(self, handle: FakeHandle) -> SimpleNamespace:
        self._enter("nvmlDeviceGetAttributes", self._gpu(handle))
        mig = self._mig(handle)
        if mig is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(
            gpuInstanceSliceCount=mig.slices,
            computeInstanceSliceCount=mig.slices,
            memorySizeMB=mig.memory_total // 1024**2,
        )

    def nvmlDeviceGetMemoryInfo(
        self, handle: FakeHandle, version: int | None = None
    ) -> SimpleNamespace:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo", gpu)
        mig = self._mig(handle)
        total, used = (
            (mig.memory_total, mig.memory_used) if mig else (gpu.memory_total, gpu.memory_used)
        )
        if version:
            if version != pynvml.nvmlMemory_v2:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
            reserved = 512 * MIB
            return SimpleNamespace(
                version=version,
                total=total,
                reserved=reserved,
                used=used,
                free=total - reserved - used,
            )
        # v1 counts the reserved memory as used (what v2 fixed).
        return SimpleNamespace(total=total, used=used + 512 * MIB, free=total - used - 512 * MIB)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> SimpleNamespace:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetUtilizationRates", gpu)
        # Neither a MIG instance nor a GPU in MIG mode reports utilization.
        if handle.mig is not None or gpu.mig_mode == pynvml.NVML_DEVICE_MIG_ENABLE:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=gpu.utilization_gpu, memory=gpu.utilization_memory)

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetTemperature", gpu)
        self._check_mig_handle(handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetTemperatureV(
        self, handle: FakeHandle, sensor: int, version: int = pynvml.nvmlTemperature_v1
    ) -> int:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetTemperatureV", gpu)
        self._check_mig_handle(handle)
        return gpu.temperature

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetPowerUsage", gpu)
        self._check_mig_handle(handle)
        return gpu.power_usage_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetEnforcedPowerLimit", gpu)
        self._check_mig_handle(handle)
        return gpu.power_limit_mw

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeHandle) -> int:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetPowerManagementLimit", gpu)
        self._check_mig_handle(handle)
        return gpu.power_limit_mw

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock: int) -> int:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetClockInfo", gpu)
        self._check_mig_handle(handle)
        if clock == pynvml.NVML_CLOCK_SM:
            return gpu.sm_clock_mhz
        if clock == pynvml.NVML_CLOCK_MEM:
            return gpu.memory_clock_mhz
        raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetCurrentClocksEventReasons", gpu)
        self._check_mig_handle(handle)
        return gpu.clock_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetCurrentClocksThrottleReasons", gpu)
        self._check_mig_handle(handle)
        return gpu.clock_event_reasons

    def nvmlDeviceGetTotalEccErrors(
        self, handle: FakeHandle, error_type: int, counter_type: int
    ) -> int:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetTotalEccErrors", gpu)
        self._check_mig_handle(handle)
        if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return gpu.ecc_corrected
        return gpu.ecc_uncorrected

    def nvmlDeviceGetPcieThroughput(self, handle: FakeHandle, counter: int) -> int:
        """KiB/s over the last 20 ms (the rate itself, here)."""
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetPcieThroughput", gpu)
        self._check_mig_handle(handle)
        rate = (
            gpu.pcie_tx_bytes_per_s
            if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES
            else gpu.pcie_rx_bytes_per_s
        )
        return int(rate / 1024)

    def nvmlDeviceGetNvLinkState(self, handle: FakeHandle, link: int) -> int:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetNvLinkState", gpu)
        if gpu.nvlinks == 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if link >= gpu.nvlinks:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return pynvml.NVML_FEATURE_ENABLED

    def nvmlDeviceGetFieldValues(
        self, handle: FakeHandle, field_ids: list[int | tuple[int, int]]
    ) -> list[SimpleNamespace]:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetFieldValues", gpu)
        now_us = int(self.clock() * 1e6)
        counters: dict[int, Callable[[], int]] = {
            pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES: lambda: self._counter(gpu.pcie_tx_bytes_per_s),
            pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES: lambda: self._counter(gpu.pcie_rx_bytes_per_s),
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: lambda: self._counter(
                gpu.nvlink_tx_bytes_per_s, 1024
            ),
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: lambda: self._counter(
                gpu.nvlink_rx_bytes_per_s, 1024
            ),
        }
        nvlink = (
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
        )
        out: list[SimpleNamespace] = []
        for requested in field_ids:
            field_id, scope = requested if isinstance(requested, tuple) else (requested, 0)
            code = gpu.fail.get(f"field:{field_id}", pynvml.NVML_SUCCESS)
            if code == pynvml.NVML_SUCCESS and (
                field_id not in counters
                or handle.mig is not None
                or (
                    field_id in nvlink
                    and (gpu.nvlinks == 0 or scope not in (ALL_LINKS, *range(gpu.nvlinks)))
                )
            ):
                code = pynvml.NVML_ERROR_NOT_SUPPORTED
            value = counters[field_id]() if code == pynvml.NVML_SUCCESS else 0
            if code == pynvml.NVML_SUCCESS and field_id in nvlink and scope != ALL_LINKS:
                value //= gpu.nvlinks
            out.append(
                SimpleNamespace(
                    fieldId=field_id,
                    scopeId=scope,
                    timestamp=now_us,
                    latencyUsec=0,
                    valueType=pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                    nvmlReturn=code,
                    value=SimpleNamespace(ullVal=value),
                )
            )
        return out

    def _running(self, handle: FakeHandle, func: str, graphics: bool) -> list[SimpleNamespace]:
        gpu = self._gpu(handle)
        self._enter(func, gpu)
        if graphics:
            if handle.mig is not None or gpu.mig_mode == pynvml.NVML_DEVICE_MIG_ENABLE:
                return []
            found = [(p, NO_INSTANCE) for p in gpu.graphics_processes]
        elif handle.mig is not None:
            mig = self._mig(handle)
            assert mig is not None
            found = [(p, mig.gpu_instance_id) for p in mig.processes]
        elif gpu.mig_mode == pynvml.NVML_DEVICE_MIG_ENABLE:
            # The GPU's handle in MIG mode lists every instance's processes.
            found = [(p, m.gpu_instance_id) for m in gpu.mig if m for p in m.processes]
        else:
            found = [(p, NO_INSTANCE) for p in gpu.processes]
        return [
            SimpleNamespace(
                pid=p.pid,
                usedGpuMemory=p.used_memory,
                gpuInstanceId=gi,
                computeInstanceId=NO_INSTANCE if gi == NO_INSTANCE else 0,
                usedGpuCcProtectedMemory=0,
            )
            for p, gi in found
        ]

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: FakeHandle) -> list[SimpleNamespace]:
        return self._running(handle, "nvmlDeviceGetComputeRunningProcesses_v3", graphics=False)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: FakeHandle) -> list[SimpleNamespace]:
        return self._running(handle, "nvmlDeviceGetComputeRunningProcesses_v2", graphics=False)

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, handle: FakeHandle) -> list[SimpleNamespace]:
        return self._running(handle, "nvmlDeviceGetGraphicsRunningProcesses_v3", graphics=True)

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle: FakeHandle) -> list[SimpleNamespace]:
        return self._running(handle, "nvmlDeviceGetGraphicsRunningProcesses_v2", graphics=True)

    # ----------------------------------------------------------- events

    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._enter("nvmlEventSetCreate")
        event_set = FakeEventSet()
        with self._events:
            self.event_sets.append(event_set)
        return event_set

    def nvmlDeviceGetSupportedEventTypes(self, handle: FakeHandle) -> int:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetSupportedEventTypes", gpu)
        return gpu.supported_events

    def nvmlDeviceRegisterEvents(
        self, handle: FakeHandle, event_types: int, event_set: FakeEventSet
    ) -> None:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceRegisterEvents", gpu)
        if event_set.freed:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if event_types & ~gpu.supported_events:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        with self._events:
            event_set.registered[handle.index] = (
                event_set.registered.get(handle.index, 0) | event_types
            )

    def nvmlEventSetWait_v2(self, event_set: FakeEventSet, timeout_ms: int) -> SimpleNamespace:
        self._enter("nvmlEventSetWait_v2")
        with self._events:
            if event_set.freed:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if not self._events.wait_for(lambda: bool(event_set.pending), timeout_ms / 1000):
                raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
            return event_set.pending.pop(0)

    def nvmlEventSetFree(self, event_set: FakeEventSet) -> None:
        self._enter("nvmlEventSetFree")
        with self._events:
            event_set.freed = True
            self._events.notify_all()


_PATCHED = (
    "nvmlInit",
    "nvmlShutdown",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetCudaDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMigMode",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceGetAttributes",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetTemperatureV",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetPowerManagementLimit",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetPcieThroughput",
    "nvmlDeviceGetNvLinkState",
    "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v2",
    "nvmlEventSetCreate",
    "nvmlDeviceGetSupportedEventTypes",
    "nvmlDeviceRegisterEvents",
    "nvmlEventSetWait_v2",
    "nvmlEventSetFree",
)


def install(monkeypatch: pytest.MonkeyPatch, machine: FakeMachine) -> FakeNvml:
    """Replace the ``pynvml`` functions the agent uses with ``machine``'s fake."""
    fake = FakeNvml(machine)
    for name in _PATCHED:
        monkeypatch.setattr(pynvml, name, getattr(fake, name))
    return fake


# ------------------------------------------------------------------ machine fixtures
# UUIDs and names are in the shape real boards report (values recorded from nvidia-smi
# output published in the field, UUIDs invented).


def a100_8x() -> FakeMachine:
    """A DGX-A100-like box: 8x A100 80 GB, current driver, str bindings, 12 NVLinks each.

    GPUs 0 and 1 run a training job (one process each, 97 % busy, 61 GiB), the others
    are idle; GPU 7 also has a small unmanaged process. Values as nvidia-smi shows them
    on such a box (SXM4 A100: 400 W limit, 1593 MHz HBM2e clock).
    """
    gpus = [
        FakeGpu(
            name="NVIDIA A100-SXM4-80GB",
            uuid=f"GPU-5a1c0e2b-7d3f-4c61-9a8e-00000000000{i}",
            memory_total=81920 * MIB,
            memory_used=4 * MIB,
            temperature=31 + i,
            power_usage_mw=61_512,
            nvlinks=12,
        )
        for i in range(8)
    ]
    for i in (0, 1):
        gpu = gpus[i]
        gpu.utilization_gpu, gpu.utilization_memory = 97, 41
        gpu.memory_used = 61 * GIB
        gpu.temperature, gpu.power_usage_mw = 68, 371_204
        gpu.sm_clock_mhz, gpu.clock_event_reasons = 1410, pynvml.nvmlClocksEventReasonSwPowerCap
        gpu.pcie_tx_bytes_per_s, gpu.pcie_rx_bytes_per_s = 0.4 * GIB, 1.5 * GIB
        gpu.nvlink_tx_bytes_per_s = gpu.nvlink_rx_bytes_per_s = 42 * GIB
        gpu.processes = [FakeProcess(pid=41_000 + i, used_memory=61 * GIB - 4 * MIB)]
    gpus[7].processes = [FakeProcess(pid=52_731, used_memory=1_234 * MIB)]
    gpus[7].memory_used = 1_238 * MIB
    gpus[7].utilization_gpu, gpus[7].clock_event_reasons = 3, 0
    return FakeMachine(gpus=gpus)


def rtx4090_4x() -> FakeMachine:
    """A workstation with 4x RTX 4090 on an older driver and an old (bytes) binding:
    the v2 memory call and the v2 CUDA-version call are not supported there, nor the
    _v3 process calls or the clock *event* reasons (R535+; the throttle-reason name
    works), nor the PCIe byte counters (``nvmlDeviceGetPcieThroughput`` does). GeForce
    boards have no ECC. GPU 0 drives the display (Xorg, a graphics process)."""
    too_old = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    gpus = [
        FakeGpu(
            name="NVIDIA GeForce RTX 4090",
            uuid=f"GPU-0b9d44aa-3e11-8f2c-61d0-7c2e9a4b5f1{i}",
            memory_total=24564 * MIB,
            memory_used=18 * MIB,
            power_usage_mw=21_337,
            power_limit_mw=450_000,
            memory_clock_mhz=405,
            pcie_rx_bytes_per_s=12 * 1024**2,
            fail={
                "nvmlDeviceGetMemoryInfo_v2": pynvml.NVML_ERROR_NOT_SUPPORTED,
                "nvmlDeviceGetTotalEccErrors": pynvml.NVML_ERROR_NOT_SUPPORTED,
                f"field:{pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES}": pynvml.NVML_ERROR_NOT_SUPPORTED,
                f"field:{pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES}": pynvml.NVML_ERROR_NOT_SUPPORTED,
            },
        )
        for i in range(4)
    ]
    gpus[0].graphics_processes = [FakeProcess(pid=1_873, used_memory=412 * MIB)]
    gpus[2].processes = [FakeProcess(pid=9_120, used_memory=20 * GIB)]
    gpus[2].utilization_gpu, gpus[2].clock_event_reasons = 88, 0
    return FakeMachine(
        gpus=gpus,
        driver_version="525.147.05",
        cuda_version=12000,
        fail={
            "nvmlSystemGetCudaDriverVersion_v2": too_old,
            "nvmlDeviceGetComputeRunningProcesses_v3": too_old,
            "nvmlDeviceGetGraphicsRunningProcesses_v3": too_old,
            "nvmlDeviceGetCurrentClocksEventReasons": too_old,
        },
        strings_as_bytes=True,
    )


def a10_vgpu_2x() -> FakeMachine:
    """A cloud VM with 2x A10 as vGPUs: the guest driver reports no power draw or limit,
    no clock reasons and no PCIe traffic (NOT_SUPPORTED), and GPU 1 refuses event
    registration: its XID errors are seen by the host only."""
    unsupported = {
        name: pynvml.NVML_ERROR_NOT_SUPPORTED
        for name in (
            "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetEnforcedPowerLimit",
            "nvmlDeviceGetPowerManagementLimit",
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
            "nvmlDeviceGetPcieThroughput",
            f"field:{pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES}",
            f"field:{pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES}",
        )
    }
    gpus = [
        FakeGpu(
            name="NVIDIA A10-24Q",
            uuid=f"GPU-7e3f0a21-9c44-11ee-8b5d-0242ac12000{i}",
            memory_total=24576 * MIB,
            memory_used=1_024 * MIB,
            memory_clock_mhz=6251,
            fail=dict(unsupported),
        )
        for i in range(2)
    ]
    gpus[1].fail["nvmlDeviceRegisterEvents"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    gpus[0].processes = [FakeProcess(pid=2_048, used_memory=None)]  # vGPU: memory unknown
    gpus[0].utilization_gpu = 12
    return FakeMachine(gpus=gpus, driver_version="535.161.08", cuda_version=12020)


def one_lost_of_4() -> FakeMachine:
    """4x H100 where GPU 2 fell off the bus (Xid 79): every query on it is GPU_IS_LOST.
    GPU 0 runs one process; the H100 SXM5 figures (700 W, 18 NVLinks, HBM3 clock)."""
    gpus = [
        FakeGpu(
            name="NVIDIA H100 80GB HBM3",
            uuid=f"GPU-c3e5a7d1-22b4-4f6e-8a90-1d2c3b4a596{i}",
            memory_total=81559 * 1024**2,
            memory_used=4 * MIB,
            power_usage_mw=71_830,
            power_limit_mw=700_000,
            memory_clock_mhz=2619,
            nvlinks=18,
            lost_after=0 if i == 2 else None,
        )
        for i in range(4)
    ]
    gpus[0].processes = [FakeProcess(pid=3_311, used_memory=12 * GIB)]
    gpus[0].memory_used = 12 * GIB + 4 * MIB
    gpus[0].utilization_gpu, gpus[0].clock_event_reasons = 35, 0
    return FakeMachine(gpus=gpus, driver_version="535.154.05", cuda_version=12020)


def library_not_found() -> FakeMachine:
    """No NVIDIA driver installed at all (this development machine)."""
    return FakeMachine(gpus=[], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


def driver_not_loaded() -> FakeMachine:
    return FakeMachine(gpus=[], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)


def no_permission() -> FakeMachine:
    return FakeMachine(gpus=[], init_error=pynvml.NVML_ERROR_NO_PERMISSION)


def rm_version_mismatch() -> FakeMachine:
    """The driver was upgraded but the old kernel module is still loaded."""
    return FakeMachine(gpus=[], init_error=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)


def a100_mig() -> FakeMachine:
    """3x A100 80 GB: GPU 0 in MIG mode with 1g.10gb instances in six of seven slots (slot 3
    is a gap left by a destroyed instance), GPU 1 with 2x 3g.40gb, GPU 2 MIG-capable but
    off. Memory as NVML reports these profiles (9856 MiB and 40192 MiB).

    Processes: one on GPU 0's first instance (slot 0), two on GPU 1's second instance
    (one whose memory the driver cannot tell) and one with a higher PID on its first, one
    on GPU 2 (whole GPU)."""
    first = [
        None
        if i == 3
        else FakeMig(
            uuid=f"MIG-1b2c3d4e-0000-5000-8000-00000000000{i}",
            profile="1g.10gb",
            gpu_instance_id=7 + i,
            compute_instance_id=0,
            slices=1,
            memory_total=9856 * 1024**2,
        )
        for i in range(7)
    ]
    second = [
        FakeMig(
            uuid=f"MIG-9a8b7c6d-0000-5000-8000-00000000001{i}",
            profile="3g.40gb",
            gpu_instance_id=1 + i,
            compute_instance_id=0,
            slices=3,
            memory_total=40192 * 1024**2,
            memory_used=13 * MIB,
        )
        for i in range(2)
    ]
    first_mig = first[0]
    assert first_mig is not None
    first_mig.processes = [FakeProcess(pid=7_001, used_memory=5 * GIB)]
    first_mig.memory_used = 5 * GIB + 13 * MIB
    second[1].processes = [
        FakeProcess(pid=7_101, used_memory=30 * GIB),
        FakeProcess(pid=7_102, used_memory=None),
    ]
    second[1].memory_used = 31 * GIB
    second[0].processes = [FakeProcess(pid=7_150, used_memory=2 * GIB)]
    second[0].memory_used = 2 * GIB + 13 * MIB
    return FakeMachine(
        gpus=[
            FakeGpu(
                name="NVIDIA A100-SXM4-80GB",
                uuid="GPU-aaaa0000-1111-2222-3333-000000000000",
                memory_total=81920 * 1024**2,
                memory_used=5 * GIB + 13 * MIB,
                mig_mode=pynvml.NVML_DEVICE_MIG_ENABLE,
                mig=list(first),
            ),
            FakeGpu(
                name="NVIDIA A100-SXM4-80GB",
                uuid="GPU-aaaa0000-1111-2222-3333-000000000001",
                memory_total=81920 * 1024**2,
                memory_used=33 * GIB + 13 * MIB,
                mig_mode=pynvml.NVML_DEVICE_MIG_ENABLE,
                mig=list(second),
            ),
            FakeGpu(
                name="NVIDIA A100-SXM4-80GB",
                uuid="GPU-aaaa0000-1111-2222-3333-000000000002",
                memory_total=81920 * 1024**2,
                memory_used=3 * GIB,
                mig_mode=pynvml.NVML_DEVICE_MIG_DISABLE,
                utilization_gpu=45,
                processes=[FakeProcess(pid=7_201, used_memory=3 * GIB)],
            ),
        ],
    )
