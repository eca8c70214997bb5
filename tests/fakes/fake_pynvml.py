"""A fake NVML at the ``pynvml`` boundary, driven by whole-machine fixtures.

Like gpustat's tests, it replaces functions of the real ``pynvml`` module (so the code
under test imports and calls ``pynvml`` exactly as in production) and raises the real
``pynvml.NVMLError`` subclasses. Calls made before ``nvmlInit`` or after ``nvmlShutdown``
raise ``Uninitialized``, as the library does, so a back-end that forgets to hold its
session open fails here too.

Usage::

    fake = install(monkeypatch, a100_8x())
    backend = open_backend(None, "node-1")
    assert fake.init_calls == 1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml
import pytest

GIB = 1024**3


@dataclass
class FakeGpu:
    """One GPU of a fake machine. ``fail`` maps a pynvml function name to the NVML error
    code it raises for this GPU (e.g. ``{"nvmlDeviceGetUUID": NVML_ERROR_GPU_IS_LOST}``)."""

    name: str
    uuid: str
    memory_total: int
    memory_used: int = 0
    fail: dict[str, int] = field(default_factory=dict)


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


class FakeNvml:
    """The fake library state for one machine; counts init/shutdown calls."""

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine
        self.init_calls = 0
        self.shutdown_calls = 0
        self.initialized = False
        self.calls: list[str] = []

    # ----------------------------------------------------------- helpers

    def _enter(self, func: str, gpu: FakeGpu | None = None) -> None:
        self.calls.append(func)
        if not self.initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        code = (gpu.fail if gpu is not None else {}).get(func, self.machine.fail.get(func))
        if code is not None:
            raise pynvml.NVMLError(code)

    def _gpu(self, handle: FakeHandle) -> FakeGpu:
        return self.machine.gpus[handle.index]

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
        return self._str(gpu.uuid)

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str | bytes:
        gpu = self._gpu(handle)
        self._enter("nvmlDeviceGetName", gpu)
        return self._str(gpu.name)

    def nvmlDeviceGetMemoryInfo(
        self, handle: FakeHandle, version: int | None = None
    ) -> SimpleNamespace:
        gpu = self._gpu(handle)
        if version:
            self._enter("nvmlDeviceGetMemoryInfo_v2", gpu)
            if version != pynvml.nvmlMemory_v2:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
            reserved = 512 * 1024**2
            return SimpleNamespace(
                version=version,
                total=gpu.memory_total,
                reserved=reserved,
                used=gpu.memory_used,
                free=gpu.memory_total - reserved - gpu.memory_used,
            )
        self._enter("nvmlDeviceGetMemoryInfo", gpu)
        return SimpleNamespace(
            total=gpu.memory_total,
            used=gpu.memory_used,
            free=gpu.memory_total - gpu.memory_used,
        )


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
    """A DGX-A100-like box: 8x A100 80 GB, current driver, str bindings."""
    return FakeMachine(
        gpus=[
            FakeGpu(
                name="NVIDIA A100-SXM4-80GB",
                uuid=f"GPU-5a1c0e2b-7d3f-4c61-9a8e-00000000000{i}",
                memory_total=81920 * 1024**2,
            )
            for i in range(8)
        ],
    )


def rtx4090_4x() -> FakeMachine:
    """A workstation with 4x RTX 4090 on an older driver and an old (bytes) binding:
    the v2 memory call and the v2 CUDA-version call are not supported there."""
    return FakeMachine(
        gpus=[
            FakeGpu(
                name="NVIDIA GeForce RTX 4090",
                uuid=f"GPU-0b9d44aa-3e11-8f2c-61d0-7c2e9a4b5f1{i}",
                memory_total=24564 * 1024**2,
                fail={"nvmlDeviceGetMemoryInfo_v2": pynvml.NVML_ERROR_NOT_SUPPORTED},
            )
            for i in range(4)
        ],
        driver_version="525.147.05",
        cuda_version=12000,
        fail={"nvmlSystemGetCudaDriverVersion_v2": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND},
        strings_as_bytes=True,
    )


def one_lost_of_4() -> FakeMachine:
    """4x H100 where GPU 2 fell off the bus (Xid 79): every query on it is GPU_IS_LOST."""
    lost = {
        f: pynvml.NVML_ERROR_GPU_IS_LOST
        for f in (
            "nvmlDeviceGetUUID",
            "nvmlDeviceGetName",
            "nvmlDeviceGetMemoryInfo",
            "nvmlDeviceGetMemoryInfo_v2",
        )
    }
    return FakeMachine(
        gpus=[
            FakeGpu(
                name="NVIDIA H100 80GB HBM3",
                uuid=f"GPU-c3e5a7d1-22b4-4f6e-8a90-1d2c3b4a596{i}",
                memory_total=81559 * 1024**2,
                fail=lost if i == 2 else {},
            )
            for i in range(4)
        ],
        driver_version="535.154.05",
        cuda_version=12020,
    )


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
