"""Real NVIDIA GPUs through NVML (package ``nvidia-ml-py``, module ``pynvml``).

One long-lived NVML session per agent: without persistence mode each ``nvmlInit`` costs
about 1.5 s and wakes every GPU, and spawning ``nvidia-smi`` costs far more than an
in-process query. Each query below names the ``nvidia-smi --query-gpu`` field it equals,
so numbers can be checked against the tool admins already trust.

NVML failures are facts about the node, not crashes: a missing library or driver makes
a CPU-only node with the reason said plainly; one lost GPU is left out and named while
the others are still registered.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from typing import Any

import pynvml

from corral.agent.gpus.base import (
    GpuBackend,
    GpuInventory,
    NoGpuBackend,
    describe_models,
    plural,
)
from corral.core.schemas import GpuInfo, MigInstance

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

    def inventory(self) -> GpuInventory:
        """Query driver, CUDA version and every GPU now. One failing GPU never hides the rest."""
        with self._lock:
            if not self._open:
                raise RuntimeError("NvmlBackend.inventory() called after close()")
            driver = _optional_text(pynvml.nvmlSystemGetDriverVersion)  # nvidia-smi: driver_version
            cuda = _cuda_version()  # nvidia-smi: "CUDA Version" in its header
            try:
                count = int(pynvml.nvmlDeviceGetCount())  # nvidia-smi: count
            except pynvml.NVMLError as exc:
                return GpuInventory(
                    backend="nvml",
                    simulated=False,
                    driver_version=driver,
                    cuda_version=cuda,
                    devices=(),
                    message=f"NVML could not count the GPUs ({exc}): registering a CPU-only node",
                )
            devices: list[GpuInfo] = []
            skipped: list[str] = []
            for index in range(count):
                try:
                    devices.append(_device(index))
                except pynvml.NVMLError as exc:
                    skipped.append(_skip_reason(index, exc))
        return GpuInventory(
            backend="nvml",
            simulated=False,
            driver_version=driver,
            cuda_version=cuda,
            devices=tuple(devices),
            message=_message(devices, skipped, driver, cuda),
        )

    def close(self) -> None:
        with self._lock:
            if not self._open:
                return
            self._open = False
            # Shutting down anyway: an error here leaves nothing useful to do.
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()


def _device(index: int) -> GpuInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)  # nvidia-smi: index
    uuid = _text(pynvml.nvmlDeviceGetUUID(handle))  # nvidia-smi: uuid
    model = _text(pynvml.nvmlDeviceGetName(handle))  # nvidia-smi: name
    memory = _memory_total_bytes(handle)  # nvidia-smi: memory.total (MiB there, bytes here)
    return GpuInfo(
        index=index, uuid=uuid, model=model, memory_bytes=memory, mig=_mig_instances(handle)
    )


_MIG_PROFILE_RE = re.compile(r"MIG\s+(\d+g\.\d+gb(?:\+me)?)", re.IGNORECASE)


def _mig_instances(handle: Any) -> list[MigInstance]:
    """The GPU's MIG instances when MIG mode is on (nvidia-smi -L lists the same)."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)  # nvidia-smi: mig.mode.current
    except pynvml.NVMLError as exc:
        if _code(exc) in _OLDER_API:
            return []  # this GPU (or driver) cannot do MIG
        raise
    if current != pynvml.NVML_DEVICE_MIG_ENABLE:
        return []
    found: list[MigInstance] = []
    for slot in range(int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except pynvml.NVMLError as exc:
            if _code(exc) == pynvml.NVML_ERROR_NOT_FOUND:
                continue  # an empty slot: instances need not be numbered without gaps
            raise
        slices, profile = _mig_profile(mig)
        found.append(
            MigInstance(
                uuid=_text(pynvml.nvmlDeviceGetUUID(mig)),  # nvidia-smi -L: (UUID: MIG-…)
                profile=profile,
                gpu_instance_id=int(pynvml.nvmlDeviceGetGpuInstanceId(mig)),
                compute_instance_id=int(pynvml.nvmlDeviceGetComputeInstanceId(mig)),
                compute_slices=slices,
                memory_bytes=_memory_total_bytes(mig),
            )
        )
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
        return (
            f"GPU {index} skipped: GPU is lost (it fell off the bus, usually Xid 79; check "
            "the kernel log; the node likely needs a reboot)"
        )
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
