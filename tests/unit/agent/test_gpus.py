"""GPU back-ends: one contract for all of them, then what is special to each."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pynvml
import pytest

from corral.agent.gpus import GpuBackend, NoGpuBackend, SimulatedBackend, open_backend
from corral.agent.gpus.nvml import NvmlBackend
from corral.agent.gpus.simulated import MODELS, parse_profile, simulated_uuid
from corral.agent.inventory import host_inventory
from fakes import fake_pynvml

GIB = 1024**3


@pytest.fixture(autouse=True)
def no_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    """The back-ends must query in-process, never spawn nvidia-smi (or anything)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a GPU back-end spawned a process: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


# ------------------------------------------------------------------ the shared contract

BackendFactory = Callable[[pytest.MonkeyPatch], GpuBackend]


def _simulated(monkeypatch: pytest.MonkeyPatch) -> GpuBackend:
    return open_backend("8xA100-80GB", "node-a")


def _nvml(machine: Callable[[], fake_pynvml.FakeMachine]) -> BackendFactory:
    def make(monkeypatch: pytest.MonkeyPatch) -> GpuBackend:
        fake_pynvml.install(monkeypatch, machine())
        return open_backend(None, "node-a")

    return make


def _none(monkeypatch: pytest.MonkeyPatch) -> GpuBackend:
    fake_pynvml.install(monkeypatch, fake_pynvml.library_not_found())
    return open_backend(None, "node-a")


@pytest.fixture(
    params=[
        pytest.param(_simulated, id="simulated-8xA100"),
        pytest.param(_nvml(fake_pynvml.a100_8x), id="nvml-8xA100"),
        pytest.param(_nvml(fake_pynvml.rtx4090_4x), id="nvml-4xRTX4090"),
        pytest.param(_nvml(fake_pynvml.one_lost_of_4), id="nvml-lost-gpu"),
        pytest.param(_none, id="none"),
    ]
)
def backend(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[GpuBackend]:
    b: GpuBackend = request.param(monkeypatch)
    yield b
    b.close()


def test_inventory_is_self_consistent(backend: GpuBackend) -> None:
    inv = backend.inventory()
    assert inv.simulated == backend.simulated
    assert inv.backend == backend.name
    assert inv.backend in ("nvml", "simulated", "none")
    indices = [d.index for d in inv.devices]
    assert indices == sorted(set(indices)), "devices in NVML index order, no duplicates"
    assert len({d.uuid for d in inv.devices}) == len(inv.devices)
    for device in inv.devices:
        assert device.uuid.startswith("GPU-")
        assert device.model
        assert device.simulated == backend.simulated
        assert device.memory_bytes > 0
    assert inv.message and "\n" not in inv.message
    if backend.simulated:
        assert "SIMULATED" in inv.message
    if not inv.devices:
        assert "CPU-only" in inv.message


def test_inventory_registers_as_a_valid_node(backend: GpuBackend) -> None:
    inv = backend.inventory()
    node = host_inventory("node-a", inv, runs_jobs_as="mapped-user")
    assert node.gpus == list(inv.devices)
    assert (node.gpu_backend, node.simulated) == (inv.backend, inv.simulated)
    assert (node.driver_version, node.cuda_version) == (inv.driver_version, inv.cuda_version)


def test_inventory_is_stable_between_calls(backend: GpuBackend) -> None:
    assert backend.inventory() == backend.inventory()


def test_close_is_idempotent(backend: GpuBackend) -> None:
    backend.close()
    backend.close()


# ------------------------------------------------------------------ NVML


def test_nvml_reads_a_dgx_a100(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml.install(monkeypatch, fake_pynvml.a100_8x())
    backend = open_backend(None, "node-a")
    inv = backend.inventory()
    backend.inventory()
    assert isinstance(backend, NvmlBackend)
    assert (inv.backend, inv.simulated) == ("nvml", False)
    assert (inv.driver_version, inv.cuda_version) == ("550.54.15", "12.4")
    assert [d.index for d in inv.devices] == list(range(8))
    assert inv.devices[3].uuid == "GPU-5a1c0e2b-7d3f-4c61-9a8e-000000000003"
    assert inv.devices[0].model == "NVIDIA A100-SXM4-80GB"
    assert inv.devices[0].memory_bytes == 80 * GIB
    assert inv.message == "8 NVIDIA GPUs (NVIDIA A100-SXM4-80GB), driver 550.54.15, CUDA 12.4"
    # One NVML session for the back-end's life, v2 memory asked first.
    assert fake.init_calls == 1 and fake.shutdown_calls == 0
    assert "nvmlDeviceGetMemoryInfo" not in fake.calls
    backend.close()
    assert fake.shutdown_calls == 1
    with pytest.raises(RuntimeError, match="after close"):
        backend.inventory()


def test_nvml_falls_back_on_older_drivers_and_bytes_bindings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_pynvml.install(monkeypatch, fake_pynvml.rtx4090_4x())
    inv = open_backend(None, "ws").inventory()
    assert inv.driver_version == "525.147.05"  # bytes decoded
    assert inv.cuda_version == "12.0"  # from the v1 call
    assert [d.model for d in inv.devices] == ["NVIDIA GeForce RTX 4090"] * 4
    assert all(isinstance(d.uuid, str) and d.uuid.startswith("GPU-") for d in inv.devices)
    assert inv.devices[0].memory_bytes == 24564 * 1024**2  # from the v1 memory call
    assert fake.calls.count("nvmlDeviceGetMemoryInfo") == 4


def test_nvml_skips_a_lost_gpu_and_keeps_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pynvml.install(monkeypatch, fake_pynvml.one_lost_of_4())
    inv = open_backend(None, "node-b").inventory()
    assert [d.index for d in inv.devices] == [0, 1, 3]
    assert inv.message.startswith("3 NVIDIA GPUs (NVIDIA H100 80GB HBM3)")
    assert "WARNING: GPU 2 skipped: GPU is lost" in inv.message
    assert "reboot" in inv.message


def test_nvml_memory_size_not_supported_is_said_not_guessed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine = fake_pynvml.a100_8x()
    machine.gpus = machine.gpus[:2]
    machine.gpus[1].fail = {
        "nvmlDeviceGetMemoryInfo_v2": pynvml.NVML_ERROR_NOT_SUPPORTED,
        "nvmlDeviceGetMemoryInfo": pynvml.NVML_ERROR_NOT_SUPPORTED,
    }
    fake_pynvml.install(monkeypatch, machine)
    inv = open_backend(None, "n").inventory()
    assert [d.memory_bytes for d in inv.devices] == [80 * GIB, 0]
    assert "memory size unknown for GPU 1" in inv.message


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        (
            fake_pynvml.library_not_found,
            "no NVIDIA GPU found (NVML: library not found): registering a CPU-only node",
        ),
        (fake_pynvml.driver_not_loaded, "kernel driver is not loaded"),
        (fake_pynvml.no_permission, "no permission to open /dev/nvidia*"),
        (fake_pynvml.rm_version_mismatch, "the node needs a reboot"),
    ],
)
def test_nvml_unusable_gives_a_cpu_only_node_saying_why(
    monkeypatch: pytest.MonkeyPatch, machine: Callable[[], fake_pynvml.FakeMachine], expected: str
) -> None:
    fake_pynvml.install(monkeypatch, machine())
    backend = open_backend(None, "n")
    inv = backend.inventory()
    assert isinstance(backend, NoGpuBackend)
    assert (inv.backend, inv.simulated, inv.devices) == ("none", False, ())
    assert (inv.driver_version, inv.cuda_version) == (None, None)
    assert expected in inv.message
    assert inv.message.endswith("registering a CPU-only node")


def test_real_nvml_on_a_machine_without_gpus_says_so() -> None:
    """No fake: the real bindings on this GPU-less machine (skipped where NVML works)."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here: this test is for machines without NVIDIA GPUs")
    inv = open_backend(None, "n").inventory()
    assert inv.backend == "none"
    assert "no NVIDIA GPU found" in inv.message or "not usable" in inv.message


# ------------------------------------------------------------------ simulated


@pytest.mark.parametrize(
    ("profile", "count", "model", "memory_gib"),
    [
        ("8xA100-80GB", 8, "NVIDIA A100-SXM4-80GB", 80),
        ("8xh100-80gb", 8, "NVIDIA H100 80GB HBM3", 80),
        ("4xRTX4090", 4, "NVIDIA GeForce RTX 4090", 24),
        ("2XA100-40GB", 2, "NVIDIA A100-SXM4-40GB", 40),
        ("8xV100-32GB", 8, "Tesla V100-SXM2-32GB", 32),
        (" 4 x L40S ", 4, "NVIDIA L40S", 48),
    ],
)
def test_simulated_profiles(profile: str, count: int, model: str, memory_gib: int) -> None:
    inv = SimulatedBackend(profile, "node-a").inventory()
    assert len(inv.devices) == count
    assert {d.model for d in inv.devices} == {model}
    assert {d.memory_bytes for d in inv.devices} == {memory_gib * GIB}
    assert inv.message == f"{count} simulated GPUs ({model}) — SIMULATED, not real hardware"


def test_simulated_uuids_are_stable_per_node_and_index() -> None:
    first = [d.uuid for d in SimulatedBackend("4xL4", "node-a").inventory().devices]
    again = [d.uuid for d in SimulatedBackend("4xL4", "node-a").inventory().devices]
    other = [d.uuid for d in SimulatedBackend("4xL4", "node-b").inventory().devices]
    assert first == again
    assert not set(first) & set(other)
    assert first[1] == simulated_uuid("node-a", 1)
    # The shape NVIDIA uses: GPU-8-4-4-4-12 hex digits.
    assert all(len(u) == 40 and u.count("-") == 5 for u in first)


@pytest.mark.parametrize("profile", ["", "A100-80GB", "8xA100", "8xB200", "x4090", "8*A100-80GB"])
def test_bad_profiles_say_the_syntax_and_the_models(profile: str) -> None:
    with pytest.raises(ValueError, match="use NxMODEL") as err:
        open_backend(profile, "n")
    for model in MODELS:
        assert model in str(err.value)


@pytest.mark.parametrize("profile", ["0xA100-80GB", "1025xA100-80GB"])
def test_profile_counts_are_bounded(profile: str) -> None:
    with pytest.raises(ValueError, match="count must be 1 to 1024"):
        parse_profile(profile)


# ------------------------------------------------------------------ MIG


def test_nvml_discovers_the_mig_layout_with_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pynvml.install(monkeypatch, fake_pynvml.a100_mig())
    backend = open_backend(None, "node-a")
    gpu0, gpu1, gpu2 = backend.inventory().devices
    backend.close()
    assert [m.profile for m in gpu0.mig] == ["1g.10gb"] * 6  # slot 3 is a gap, skipped
    assert [m.gpu_instance_id for m in gpu0.mig] == [7, 8, 9, 11, 12, 13]
    assert gpu0.mig[0].uuid == "MIG-1b2c3d4e-0000-5000-8000-000000000000"
    assert gpu0.mig[0].memory_bytes == 9856 * 1024**2
    assert {m.compute_slices for m in gpu0.mig} == {1}
    assert [(m.profile, m.compute_slices) for m in gpu1.mig] == [("3g.40gb", 3)] * 2
    assert gpu2.mig == []  # MIG-capable, mode off: the whole GPU is the device


def test_nvml_mig_profile_from_attributes_when_the_name_lacks_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_pynvml.install(monkeypatch, fake_pynvml.a100_mig())
    real_name = fake.nvmlDeviceGetName
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetName", lambda h: "NVIDIA A100" if h.mig is not None else real_name(h)
    )
    backend = open_backend(None, "node-a")
    gpu1 = backend.inventory().devices[1]
    backend.close()
    assert [m.profile for m in gpu1.mig] == ["3g.40gb"] * 2  # 40192 MiB rounds up to 40


def test_gpus_without_mig_report_none(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pynvml.install(monkeypatch, fake_pynvml.rtx4090_4x())
    backend = open_backend(None, "node-a")
    assert all(d.mig == [] for d in backend.inventory().devices)
    backend.close()


def test_simulated_mig_layout() -> None:
    backend = SimulatedBackend("4xH100-80GB,mig=0-1:1g.10gb*7/3:3g.40gb+4g.40gb", "n")
    devices = backend.inventory().devices
    assert [len(d.mig) for d in devices] == [7, 7, 0, 2]
    assert [m.profile for m in devices[3].mig] == ["3g.40gb", "4g.40gb"]
    assert devices[3].mig[1].compute_slices == 4
    uuids = [m.uuid for d in devices for m in d.mig]
    assert len(set(uuids)) == 16 and all(u.startswith("MIG-") for u in uuids)
    again = SimulatedBackend("4xH100-80GB,mig=0-1:1g.10gb*7/3:3g.40gb+4g.40gb", "n")
    assert [m.uuid for d in again.inventory().devices for m in d.mig] == uuids


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("4xRTX4090,mig=all:1g.10gb*7", "have no MIG"),
        ("2xA100-80GB,mig=0:1g.10gb*8", "7 compute slices"),
        ("2xA100-80GB,mig=0:7g.90gb*1", "80 GiB"),
        ("2xA100-80GB,mig=2:1g.10gb*1", "numbered 0 to 1"),
        ("2xA100-80GB,mig=0:1g10gb*1", "bad MIG profile"),
        ("2xA100-80GB,mig=zero:1g.10gb*1", "bad MIG layout"),
    ],
)
def test_bad_simulated_mig_layouts_are_refused(profile: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulatedBackend(profile, "n")
