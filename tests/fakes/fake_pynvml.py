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
class FakeMig:
    """One MIG instance: what NVML reports through its MIG device handle."""

    uuid: str
    profile: str  # "1g.10gb"
    gpu_instance_id: int
    compute_instance_id: int
    slices: int
    memory_total: int


@dataclass
class FakeGpu:
    """One GPU of a fake machine. ``fail`` maps a pynvml function name to the NVML error
    code it raises for this GPU (e.g. ``{"nvmlDeviceGetUUID": NVML_ERROR_GPU_IS_LOST}``).

    ``mig_mode`` is NVML's current MIG mode (None: the GPU cannot do MIG and the query is
    NOT_SUPPORTED); ``mig`` lists the MIG device slots, None for an empty slot (NVML
    answers NOT_FOUND there, as it does for gaps left by destroyed instances).
    """

    name: str
    uuid: str
    memory_total: int
    memory_used: int = 0
    fail: dict[str, int] = field(default_factory=dict)
    mig_mode: int | None = None
    mig: list[FakeMig | None] = field(default_factory=list)


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
        mig = self._mig(handle)
        if mig is not None:
            gpu = FakeGpu(
                name=gpu.name, uuid=mig.uuid, memory_total=mig.memory_total, fail=gpu.fail
            )
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
    "nvmlDeviceGetMigMode",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceGetAttributes",
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


def a100_mig() -> FakeMachine:
    """3x A100 80 GB: GPU 0 in MIG mode with 1g.10gb instances in six of seven slots (slot 3
    is a gap left by a destroyed instance), GPU 1 with 2x 3g.40gb, GPU 2 MIG-capable but
    off. Memory as NVML reports these profiles (9856 MiB and 40192 MiB)."""
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
    second: list[FakeMig | None] = [
        FakeMig(
            uuid=f"MIG-9a8b7c6d-0000-5000-8000-00000000001{i}",
            profile="3g.40gb",
            gpu_instance_id=1 + i,
            compute_instance_id=0,
            slices=3,
            memory_total=40192 * 1024**2,
        )
        for i in range(2)
    ]
    return FakeMachine(
        gpus=[
            FakeGpu(
                name="NVIDIA A100-SXM4-80GB",
                uuid="GPU-aaaa0000-1111-2222-3333-000000000000",
                memory_total=81920 * 1024**2,
                mig_mode=pynvml.NVML_DEVICE_MIG_ENABLE,
                mig=list(first),
            ),
            FakeGpu(
                name="NVIDIA A100-SXM4-80GB",
                uuid="GPU-aaaa0000-1111-2222-3333-000000000001",
                memory_total=81920 * 1024**2,
                mig_mode=pynvml.NVML_DEVICE_MIG_ENABLE,
                mig=second,
            ),
            FakeGpu(
                name="NVIDIA A100-SXM4-80GB",
                uuid="GPU-aaaa0000-1111-2222-3333-000000000002",
                memory_total=81920 * 1024**2,
                mig_mode=pynvml.NVML_DEVICE_MIG_DISABLE,
            ),
        ],
    )
