"""GPU back-ends: one contract for all of them, then what is special to each."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pynvml
import pytest

from corral.agent.gpus import GpuBackend, NoGpuBackend, SimulatedBackend, nvml, open_backend
from corral.agent.gpus.nvml import NvmlBackend
from corral.agent.gpus.simulated import (
    MODELS,
    SPECS,
    parse_load,
    parse_profile,
    simulated_uuid,
)
from corral.agent.inventory import host_inventory
from corral.core.telemetry import GpuSample, XidEvent
from fakes import fake_pynvml

GIB = 1024**3
MIB = 1024**2
PRODUCTION_XID_WAIT_MS = nvml.XID_WAIT_MS


@pytest.fixture(autouse=True)
def no_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    """The back-ends must query in-process, never spawn nvidia-smi (or anything)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a GPU back-end spawned a process: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.fixture(autouse=True)
def quick_xid_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short event waits, so that closing a back-end takes milliseconds in tests (the
    production wait is checked by its own test)."""
    monkeypatch.setattr(nvml, "XID_WAIT_MS", 20)


def write_process(
    root: Path,
    pid: int,
    env: dict[str, str],
    *,
    start: int = 4242,
    ppid: int = 1,
    comm: str = "python3",
) -> None:
    """A process in a fake /proc tree: its ``stat`` (parent, start time) and ``environ``."""
    directory = root / str(pid)
    directory.mkdir(exist_ok=True)
    # pid (comm) state ppid, then 17 fields, then starttime (field 22), then more.
    (directory / "stat").write_text(f"{pid} ({comm}) S {ppid} " + "0 " * 17 + f"{start} 0 0\n")
    (directory / "environ").write_bytes(
        b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    )


# ------------------------------------------------------------------ the shared contract

BackendFactory = Callable[[pytest.MonkeyPatch, Path], GpuBackend]


def _simulated(profile: str) -> BackendFactory:
    def make(monkeypatch: pytest.MonkeyPatch, proc: Path) -> GpuBackend:
        # A job on GPU 1 and a hand-started process on GPU 0's first MIG instance (if any).
        write_process(
            proc,
            301,
            {
                "CUDA_VISIBLE_DEVICES": "1",
                "CORRAL_NODE": "node-a",
                "CORRAL_SIM_LOAD": "util:70,mem:9GiB",
            },
        )
        backend = SimulatedBackend(profile, "node-a", proc_root=proc)
        mig = backend.inventory().devices[0].mig
        if mig:
            write_process(
                proc,
                302,
                {"CUDA_VISIBLE_DEVICES": mig[0].uuid, "CORRAL_SIM_NODE": "node-a"},
            )
        return backend

    return make


def _nvml(machine: Callable[[], fake_pynvml.FakeMachine]) -> BackendFactory:
    def make(monkeypatch: pytest.MonkeyPatch, proc: Path) -> GpuBackend:
        fake_pynvml.install(monkeypatch, machine())
        return open_backend(None, "node-a")

    return make


def _none(monkeypatch: pytest.MonkeyPatch, proc: Path) -> GpuBackend:
    fake_pynvml.install(monkeypatch, fake_pynvml.library_not_found())
    return open_backend(None, "node-a")


SIMULATED_MIG = "4xH100-80GB,mig=0-1:1g.10gb*7/3:3g.40gb+4g.40gb"


@pytest.fixture(
    params=[
        pytest.param(_simulated("8xA100-80GB"), id="simulated-8xA100"),
        pytest.param(_simulated(SIMULATED_MIG), id="simulated-mig"),
        pytest.param(_nvml(fake_pynvml.a100_8x), id="nvml-8xA100"),
        pytest.param(_nvml(fake_pynvml.rtx4090_4x), id="nvml-4xRTX4090"),
        pytest.param(_nvml(fake_pynvml.one_lost_of_4), id="nvml-lost-gpu"),
        pytest.param(_nvml(fake_pynvml.a10_vgpu_2x), id="nvml-vgpu"),
        pytest.param(_nvml(fake_pynvml.a100_mig), id="nvml-mig"),
        pytest.param(_none, id="none"),
    ]
)
def backend(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[GpuBackend]:
    proc = tmp_path / "proc"
    proc.mkdir()
    b: GpuBackend = request.param(monkeypatch, proc)
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


def test_sample_is_one_per_gpu_of_the_inventory_in_order(backend: GpuBackend) -> None:
    inv = backend.inventory()
    samples = backend.sample()
    assert [(s.index, s.uuid) for s in samples] == [(d.index, d.uuid) for d in inv.devices]
    for sample, device in zip(samples, inv.devices, strict=True):
        assert sample.error is None
        assert sample.memory_total_bytes == device.memory_bytes
        assert sample.memory_used_bytes is not None
        assert 0 <= sample.memory_used_bytes <= sample.memory_total_bytes
    # A sample goes on the wire as is (the caller adds the time).
    for sample in samples:
        assert GpuSample.model_validate_json(sample.model_dump_json()) == sample


def test_sample_values_are_plausible(backend: GpuBackend) -> None:
    for sample in backend.sample():
        for percent in (sample.utilization_percent, sample.memory_utilization_percent):
            assert percent is None or 0 <= percent <= 100
        if sample.temperature_celsius is not None:
            assert 10 <= sample.temperature_celsius <= 110
        if sample.power_watts is not None and sample.power_limit_watts is not None:
            assert 0 < sample.power_watts <= sample.power_limit_watts
        for clock in (sample.sm_clock_mhz, sample.memory_clock_mhz):
            assert clock is None or clock > 0
        assert sample.throttle_reasons is None or all(
            r and r == r.strip() for r in sample.throttle_reasons
        )
        total = sample.memory_total_bytes or 0
        for process in sample.processes:
            assert process.pid > 0
            assert (process.owner, process.job_id, process.user) == ("unknown", None, None)
            assert process.used_memory_bytes is None or process.used_memory_bytes <= total
        assert [p.pid for p in sample.processes] == sorted({p.pid for p in sample.processes})


def test_sample_covers_every_mig_instance(backend: GpuBackend) -> None:
    inv = backend.inventory()
    for sample, device in zip(backend.sample(), inv.devices, strict=True):
        assert [m.uuid for m in sample.mig] == [m.uuid for m in device.mig]
        for mig, instance in zip(sample.mig, device.mig, strict=True):
            assert mig.profile == instance.profile
            assert mig.memory_total_bytes == instance.memory_bytes
            assert mig.memory_used_bytes is not None
            assert 0 <= mig.memory_used_bytes <= mig.memory_total_bytes
            # Neither NVML nor the simulation has utilization per instance: None, not 0.
            assert mig.utilization_percent is None
            assert {p.pid for p in mig.processes} <= {p.pid for p in sample.processes}
        if device.mig:
            assert sample.utilization_percent is None  # a GPU in MIG mode has none either


def test_sampling_shows_the_processes(backend: GpuBackend) -> None:
    """Every fixture with GPUs has a process on one (see the factories and machines)."""
    samples = backend.sample()
    if backend.name == "none":
        assert samples == ()
        return
    busy = [s for s in samples if s.processes]
    assert busy
    assert all(s.memory_used_bytes for s in busy)
    idle = [s for s in samples if not s.processes and not s.mig]
    assert all(s.utilization_percent in (0, None) for s in idle)


def test_sampling_again_gives_the_same_gpus(backend: GpuBackend) -> None:
    first, second = backend.sample(), backend.sample()
    assert [(s.index, s.uuid) for s in first] == [(s.index, s.uuid) for s in second]
    for sample in second:
        for rate in (
            sample.pcie_tx_bytes_per_s,
            sample.pcie_rx_bytes_per_s,
            sample.nvlink_tx_bytes_per_s,
            sample.nvlink_rx_bytes_per_s,
        ):
            assert rate is None or rate >= 0


def test_xid_events_is_empty_when_nothing_happened(backend: GpuBackend) -> None:
    assert backend.xid_events() == []


def test_close_is_idempotent_and_stops_the_event_thread(backend: GpuBackend) -> None:
    thread: threading.Thread | None = getattr(backend, "xid_thread", None)
    if backend.name == "nvml":
        assert thread is not None and thread.is_alive()  # every NVML fixture has XIDs
    backend.close()
    backend.close()
    assert thread is None or not thread.is_alive()


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


# ------------------------------------------------------------------ NVML sampling


def _nvml_backend(
    monkeypatch: pytest.MonkeyPatch, machine: fake_pynvml.FakeMachine
) -> tuple[fake_pynvml.FakeNvml, NvmlBackend]:
    fake = fake_pynvml.install(monkeypatch, machine)
    backend = open_backend(None, "node-a")
    assert isinstance(backend, NvmlBackend)
    return fake, backend


def test_nvml_samples_a_dgx_a100(monkeypatch: pytest.MonkeyPatch) -> None:
    fake, backend = _nvml_backend(monkeypatch, fake_pynvml.a100_8x())
    samples = backend.sample()
    backend.close()
    busy, idle, other = samples[0], samples[2], samples[7]
    assert busy.model_dump(exclude={"pcie_tx_bytes_per_s", "pcie_rx_bytes_per_s"}) == {
        "index": 0,
        "uuid": "GPU-5a1c0e2b-7d3f-4c61-9a8e-000000000000",
        "utilization_percent": 97.0,
        "memory_utilization_percent": 41.0,
        "memory_used_bytes": 61 * GIB,  # v2: without the reserved memory
        "memory_total_bytes": 80 * GIB,
        "temperature_celsius": 68.0,
        "power_watts": 371.204,  # from milliwatts
        "power_limit_watts": 400.0,
        "sm_clock_mhz": 1410,
        "memory_clock_mhz": 1593,
        "throttle_reasons": ["sw_power_cap"],
        "ecc_corrected_errors": 0,
        "ecc_uncorrected_errors": 0,
        "nvlink_tx_bytes_per_s": None,  # counters: no rate before a second reading
        "nvlink_rx_bytes_per_s": None,
        "processes": [
            {
                "pid": 41_000,
                "used_memory_bytes": 61 * GIB - 4 * MIB,
                "owner": "unknown",
                "job_id": None,
                "rank": None,
                "container": None,
                "user": None,
                "command": None,
            }
        ],
        "mig": [],
        "error": None,
    }
    assert (idle.utilization_percent, idle.throttle_reasons, idle.processes) == (
        0.0,
        ["gpu_idle"],
        [],
    )
    assert [(p.pid, p.used_memory_bytes) for p in other.processes] == [(52_731, 1_234 * MIB)]
    assert other.throttle_reasons == []  # measured: no reason, unlike None (unknown)
    # Sampling asks no static fact again: no handle, UUID, name or MIG query.
    assert (
        "nvmlDeviceGetName" not in fake.calls[fake.calls.index("nvmlDeviceGetUtilizationRates") :]
    )


def test_nvml_rates_come_from_counters_between_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    fake, backend = _nvml_backend(monkeypatch, fake_pynvml.a100_8x())
    now = [fake.clock() + 10]
    fake.clock = lambda: now[0]
    first = backend.sample()[0]
    now[0] += 2.0
    second, idle = backend.sample()[0:3:2]
    backend.close()
    assert (first.pcie_tx_bytes_per_s, first.nvlink_rx_bytes_per_s) == (None, None)
    assert second.pcie_tx_bytes_per_s == pytest.approx(0.4 * GIB, abs=1)
    assert second.pcie_rx_bytes_per_s == pytest.approx(1.5 * GIB, abs=1)
    assert second.nvlink_tx_bytes_per_s == pytest.approx(42 * GIB, abs=1024)  # KiB counters
    assert second.nvlink_rx_bytes_per_s == pytest.approx(42 * GIB, abs=1024)
    assert (idle.pcie_tx_bytes_per_s, idle.nvlink_tx_bytes_per_s) == (0.0, 0.0)  # measured


def test_nvml_not_supported_is_none_and_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GeForce on an older driver: no ECC, no NVLink, no PCIe counters, no _v3 process
    calls, no clock *event* reasons (the older throttle-reason call answers)."""
    fake, backend = _nvml_backend(monkeypatch, fake_pynvml.rtx4090_4x())
    first = backend.sample()
    calls_before = len(fake.calls)
    second = backend.sample()
    backend.close()
    for sample in (*first, *second):
        assert (sample.ecc_corrected_errors, sample.ecc_uncorrected_errors) == (None, None)
        assert (sample.nvlink_tx_bytes_per_s, sample.nvlink_rx_bytes_per_s) == (None, None)
        assert sample.power_limit_watts == 450.0
        assert sample.pcie_rx_bytes_per_s == 12 * MIB  # nvmlDeviceGetPcieThroughput, KiB/s
    assert first[0].throttle_reasons == ["gpu_idle"]  # through the older call
    assert [(p.pid, p.used_memory_bytes) for p in first[0].processes] == [(1_873, 412 * MIB)]
    assert [(p.pid, p.used_memory_bytes) for p in first[2].processes] == [(9_120, 20 * GIB)]
    again = fake.calls[calls_before:]
    for refused in (
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetNvLinkState",
        "nvmlDeviceGetMemoryInfo_v2",
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetUUID",
    ):
        assert refused not in again, f"{refused} asked again"
    assert again.count("nvmlDeviceGetComputeRunningProcesses_v2") == 4
    assert again.count("nvmlDeviceGetCurrentClocksThrottleReasons") == 4


def test_nvml_vgpu_without_power_readings_reports_none(monkeypatch: pytest.MonkeyPatch) -> None:
    _, backend = _nvml_backend(monkeypatch, fake_pynvml.a10_vgpu_2x())
    samples = backend.sample()
    backend.close()
    for sample in samples:
        assert sample.error is None
        assert (sample.power_watts, sample.power_limit_watts) == (None, None)
        assert sample.throttle_reasons is None
        assert (sample.pcie_tx_bytes_per_s, sample.pcie_rx_bytes_per_s) == (None, None)
        assert sample.ecc_corrected_errors == 0  # supported there, and measured zero
    assert samples[0].utilization_percent == 12.0
    assert [(p.pid, p.used_memory_bytes) for p in samples[0].processes] == [(2_048, None)]


def test_nvml_falls_back_to_the_newer_temperature_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A future driver without the deprecated nvmlDeviceGetTemperature."""
    machine = fake_pynvml.a100_8x()
    machine.fail["nvmlDeviceGetTemperature"] = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    _, backend = _nvml_backend(monkeypatch, machine)
    temperatures = [s.temperature_celsius for s in backend.sample()]
    backend.close()
    assert temperatures == [68.0, 68.0, 33.0, 34.0, 35.0, 36.0, 37.0, 38.0]


def test_nvml_lost_gpu_gives_an_error_sample_and_the_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, backend = _nvml_backend(monkeypatch, fake_pynvml.a100_8x())
    assert all(s.error is None for s in backend.sample())
    fake.machine.gpus[3].lost_after = 2  # it falls off the bus during the next sample
    samples = backend.sample()
    later = backend.sample()
    events = _wait_for_xids(backend, 1)
    backend.close()
    for current in (samples, later):
        lost = current[3]
        assert lost.error is not None and lost.error.startswith("GPU is lost")
        assert (lost.index, lost.uuid) == (3, "GPU-5a1c0e2b-7d3f-4c61-9a8e-000000000003")
        assert lost.utilization_percent is None and lost.memory_used_bytes is None
        assert [s.error for s in current if s.index != 3] == [None] * 7
        assert current[0].utilization_percent == 97.0
    assert [(e.gpu_index, e.xid, e.uuid) for e in events] == [(3, 79, lost.uuid)]
    assert events[0].message == "Xid 79: GPU has fallen off the bus"


def test_nvml_samples_mig_instances_and_their_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    _, backend = _nvml_backend(monkeypatch, fake_pynvml.a100_mig())
    gpu0, gpu1, gpu2 = backend.sample()
    backend.close()
    assert len(gpu0.mig) == 6
    first = gpu0.mig[0]
    assert (first.uuid, first.profile) == ("MIG-1b2c3d4e-0000-5000-8000-000000000000", "1g.10gb")
    assert (first.memory_used_bytes, first.memory_total_bytes) == (5 * GIB + 13 * MIB, 9856 * MIB)
    assert [(p.pid, p.used_memory_bytes) for p in first.processes] == [(7_001, 5 * GIB)]
    assert all(m.processes == [] for m in gpu0.mig[1:])
    assert [(p.pid, p.used_memory_bytes) for p in gpu1.mig[1].processes] == [
        (7_101, 30 * GIB),
        (7_102, None),  # the driver could not tell: unknown, not 0
    ]
    assert [p.pid for p in gpu1.mig[0].processes] == [7_150]
    assert [p.pid for p in gpu1.processes] == [7_101, 7_102, 7_150]  # all instances', by PID
    assert gpu1.mig[1].memory_used_bytes == 31 * GIB
    assert (gpu0.utilization_percent, gpu0.memory_utilization_percent) == (None, None)
    assert gpu0.memory_used_bytes == 5 * GIB + 13 * MIB
    assert gpu2.mig == [] and gpu2.utilization_percent == 45.0
    assert [p.pid for p in gpu2.processes] == [7_201]


def test_nvml_sample_after_close_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _, backend = _nvml_backend(monkeypatch, fake_pynvml.a100_8x())
    backend.close()
    with pytest.raises(RuntimeError, match="after close"):
        backend.sample()


# ------------------------------------------------------------------ XID events


def _wait_for_xids(backend: GpuBackend, count: int, timeout: float = 3.0) -> list[XidEvent]:
    events: list[XidEvent] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        events += backend.xid_events()
        time.sleep(0.005)
    return events


def test_nvml_delivers_xid_events_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fake, backend = _nvml_backend(monkeypatch, fake_pynvml.a100_8x())
    assert fake.emit_xid(5, 48) == 1
    assert fake.emit_xid(2, 13) == 1
    events = _wait_for_xids(backend, 2)
    assert [(e.gpu_index, e.xid) for e in events] == [(5, 48), (2, 13)]
    assert events[0].uuid == "GPU-5a1c0e2b-7d3f-4c61-9a8e-000000000005"
    assert events[0].message == "Xid 48: double-bit ECC error"
    assert events[0].at.tzinfo is not None
    assert abs(time.time() - events[0].at.timestamp()) < 60
    assert backend.xid_events() == []  # drained
    backend.close()


def test_nvml_xid_on_a_mig_instance_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake, backend = _nvml_backend(monkeypatch, fake_pynvml.a100_mig())
    fake.emit_xid(1, 31, gpu_instance_id=2)
    fake.emit_xid(0, 1234)
    events = _wait_for_xids(backend, 2)
    backend.close()
    assert [e.message for e in events] == [
        "Xid 31: GPU memory page fault (usually an application error) (MIG GPU instance 2)",
        "Xid 1234",
    ]


def test_nvml_gpu_refusing_xid_registration_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    fake, backend = _nvml_backend(monkeypatch, fake_pynvml.a10_vgpu_2x())
    assert [sorted(s.registered) for s in fake.live_event_sets] == [[0]]
    assert fake.emit_xid(1, 79) == 0  # GPU 1 refused registration: not watched
    assert fake.emit_xid(0, 43) == 1
    events = _wait_for_xids(backend, 1)
    samples = backend.sample()
    backend.close()
    assert [(e.gpu_index, e.xid) for e in events] == [(0, 43)]
    assert [s.error for s in samples] == [None, None]  # both GPUs still sampled


def test_nvml_without_event_sets_still_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = fake_pynvml.a100_8x()
    machine.fail["nvmlEventSetCreate"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    fake, backend = _nvml_backend(monkeypatch, machine)
    assert backend.xid_thread is None
    assert fake.emit_xid(0, 48) == 0
    assert len(backend.sample()) == 8
    assert backend.xid_events() == []
    backend.close()


def test_nvml_close_stops_the_xid_thread_within_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml, "XID_WAIT_MS", PRODUCTION_XID_WAIT_MS)
    fake, backend = _nvml_backend(monkeypatch, fake_pynvml.a100_8x())
    thread = backend.xid_thread
    assert thread is not None and thread.daemon and thread.is_alive()
    assert [sorted(s.registered) for s in fake.live_event_sets] == [list(range(8))]
    time.sleep(0.05)  # let it enter a wait
    started = time.monotonic()
    backend.close()
    assert time.monotonic() - started < 1.0
    assert not thread.is_alive()
    assert fake.live_event_sets == []
    # The event set is freed before NVML is shut down (the thread was inside NVML).
    assert fake.calls.index("nvmlEventSetFree") < fake.calls.index("nvmlShutdown")
    assert fake.emit_xid(0, 48) == 0


# ------------------------------------------------------------------ simulated sampling


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    (root / "self").mkdir()  # not a PID: ignored
    (root / "meminfo").write_text("MemTotal: 1 kB\n")
    return root


def _job_env(devices: str, load: str | None = None, node: str = "node-a") -> dict[str, str]:
    env = {"PATH": "/usr/bin", "CORRAL_JOB_ID": "17", "CORRAL_NODE": node}
    env["CUDA_VISIBLE_DEVICES"] = devices
    if load is not None:
        env["CORRAL_SIM_LOAD"] = load
    return env


def test_simulated_idle_gpus_look_idle(proc: Path) -> None:
    samples = SimulatedBackend("2xA100-80GB", "node-a", proc_root=proc).sample()
    for sample in samples:
        assert sample.utilization_percent == 0.0 and sample.memory_utilization_percent == 0.0
        assert sample.memory_used_bytes == 4 * MIB  # what the driver keeps
        assert sample.memory_total_bytes == 80 * GIB
        assert (sample.temperature_celsius, sample.power_watts) == (32.0, 60.0)
        assert (sample.power_limit_watts, sample.sm_clock_mhz) == (400.0, 210)
        assert sample.throttle_reasons == ["gpu_idle"]
        assert sample.processes == []
        assert (sample.pcie_rx_bytes_per_s, sample.nvlink_tx_bytes_per_s) == (0.0, 0.0)


def test_simulated_job_and_hand_started_processes_load_their_gpus(proc: Path) -> None:
    backend = SimulatedBackend("4xA100-80GB", "node-a", proc_root=proc)
    write_process(proc, 1001, _job_env("1", "util:80,mem:20GiB"))
    write_process(
        proc,
        1002,
        {"CUDA_VISIBLE_DEVICES": "2", "CORRAL_SIM_NODE": "node-a"},  # defaults: 50 %, 2 GiB
    )
    write_process(proc, 1003, _job_env("3", "util:90", node="node-b"))  # another node's
    write_process(proc, 1004, {"CUDA_VISIBLE_DEVICES": "3", "CORRAL_SIM_NODE": "node-b"})
    write_process(proc, 1005, {"CORRAL_NODE": "node-a"})  # no GPU named
    write_process(proc, 1006, _job_env("7,9", "util:90"))  # no such GPUs here
    gpu0, gpu1, gpu2, gpu3 = backend.sample()
    assert [(p.pid, p.used_memory_bytes, p.owner) for p in gpu1.processes] == [
        (1001, 20 * GIB, "unknown")
    ]
    assert (gpu1.utilization_percent, gpu1.memory_used_bytes) == (80.0, 20 * GIB + 4 * MIB)
    assert gpu1.memory_utilization_percent == 40.0
    assert [(p.pid, p.used_memory_bytes) for p in gpu2.processes] == [(1002, 2 * GIB)]
    assert gpu2.utilization_percent == 50.0
    for idle in (gpu0, gpu3):
        assert (idle.processes, idle.utilization_percent) == ([], 0.0)
    # Derived from the load: 32 → 75 °C, idle → 90 % of the 400 W limit, 210 MHz → boost.
    assert gpu1.temperature_celsius == pytest.approx(32 + 43 * 0.8)
    assert gpu1.power_watts == pytest.approx(60 + (360 - 60) * 0.8)
    assert gpu1.sm_clock_mhz == 210 + round((1410 - 210) * 0.8)
    assert gpu1.throttle_reasons == []


def test_simulated_loads_add_up_and_are_capped(proc: Path) -> None:
    backend = SimulatedBackend("2xL40S", "node-a", proc_root=proc)
    uuid1 = backend.inventory().devices[1].uuid
    write_process(proc, 10, _job_env("0", "util:60,mem:10GiB"))
    write_process(proc, 11, _job_env("0", "util:70,mem:30GiB"))
    write_process(proc, 12, _job_env(uuid1, "mem:500GB"))  # a GPU UUID works too
    gpu0, gpu1 = backend.sample()
    assert gpu0.utilization_percent == 100.0
    assert gpu0.memory_used_bytes == 40 * GIB + 4 * MIB
    assert gpu0.temperature_celsius == 75.0
    assert gpu0.power_watts == pytest.approx(350 * 0.9)
    assert gpu1.memory_used_bytes == 48 * GIB  # capped at the GPU's memory
    assert [(p.pid, p.used_memory_bytes) for p in gpu1.processes] == [(12, 48 * GIB)]
    # An L40S has ECC but no NVLink: 0 errors, and None (not 0) for NVLink.
    assert (gpu0.ecc_corrected_errors, gpu0.nvlink_tx_bytes_per_s) == (0, None)


def test_simulated_temperature_and_power_rise_with_utilization(proc: Path) -> None:
    backend = SimulatedBackend("4xRTX4090", "node-a", proc_root=proc)
    for gpu, util in enumerate((0, 25, 60, 100)):
        if util:
            write_process(proc, 100 + gpu, _job_env(str(gpu), f"util:{util}"))
    samples = backend.sample()
    for key in ("temperature_celsius", "power_watts", "sm_clock_mhz", "pcie_rx_bytes_per_s"):
        values = [getattr(s, key) for s in samples]
        assert values == sorted(values) and len(set(values)) == 4, key
    assert all(s.ecc_corrected_errors is None for s in samples)  # GeForce: no ECC


def test_simulated_mig_uuid_process_shows_on_its_instance(proc: Path) -> None:
    backend = SimulatedBackend(SIMULATED_MIG, "node-a", proc_root=proc)
    devices = backend.inventory().devices
    target = devices[3].mig[1]  # a 4g.40gb instance
    write_process(proc, 500, _job_env(target.uuid, "util:80,mem:12GiB"))
    write_process(proc, 501, _job_env(devices[0].mig[6].uuid, "mem:64GiB"))  # > 10 GiB
    samples = backend.sample()
    gpu3 = samples[3]
    assert gpu3.mig[0].processes == []
    on_instance = gpu3.mig[1]
    assert on_instance.uuid == target.uuid
    assert [(p.pid, p.used_memory_bytes) for p in on_instance.processes] == [(500, 12 * GIB)]
    assert on_instance.memory_used_bytes == 12 * GIB + 4 * MIB
    assert [p.pid for p in gpu3.processes] == [500]
    assert gpu3.utilization_percent is None  # MIG mode, as on real GPUs
    # The GPU's load is the instance's 80 % weighted by its 4 of 7 slices.
    assert gpu3.temperature_celsius == pytest.approx(32 + 43 * 0.8 * 4 / 7, abs=0.05)
    assert samples[0].mig[6].memory_used_bytes == 10 * GIB  # capped at the instance
    assert samples[0].mig[6].processes[0].used_memory_bytes == 10 * GIB
    assert samples[2].processes == [] and samples[2].mig == []


def test_simulated_process_on_two_instances_is_listed_once_for_the_gpu(proc: Path) -> None:
    backend = SimulatedBackend(SIMULATED_MIG, "node-a", proc_root=proc)
    gpu1 = backend.inventory().devices[1]
    write_process(proc, 600, _job_env(f"{gpu1.mig[2].uuid},{gpu1.mig[0].uuid}", "mem:1GiB"))
    write_process(proc, 60, _job_env(gpu1.mig[1].uuid, "mem:3GiB"))
    sample = backend.sample()[1]
    assert [(p.pid, p.used_memory_bytes) for p in sample.processes] == [
        (60, 3 * GIB),
        (600, 2 * GIB),  # 1 GiB on each of two instances
    ]
    assert [[p.pid for p in m.processes] for m in sample.mig[:3]] == [[600], [60], [600]]


def test_simulated_counts_a_forked_or_wrapped_process_once(proc: Path) -> None:
    backend = SimulatedBackend("2xH100-80GB", "node-a", proc_root=proc)
    env = _job_env("0", "util:40,mem:8GiB")
    write_process(proc, 700, env, comm="bash")  # the job's shell
    write_process(proc, 701, env, ppid=700)  # the program it started: same variables
    write_process(proc, 702, env, ppid=701, comm="pt_data_worker")  # a forked worker
    write_process(proc, 703, _job_env("0", "util:30,mem:1GiB"), ppid=700)  # its own load
    gpu0 = backend.sample()[0]
    assert [p.pid for p in gpu0.processes] == [700, 703]
    assert gpu0.utilization_percent == 70.0
    assert gpu0.memory_used_bytes == 9 * GIB + 4 * MIB


def test_simulated_skips_unreadable_and_vanished_processes(proc: Path) -> None:
    backend = SimulatedBackend("1xT4", "node-a", proc_root=proc)
    write_process(proc, 800, _job_env("0", "util:10"))
    write_process(proc, 801, _job_env("0", "util:20"))
    (proc / "801" / "environ").unlink()
    (proc / "801" / "environ").mkdir()  # reading it fails (like another user's, unprivileged)
    (proc / "802").mkdir()  # ended between the listing and the read: no stat
    write_process(proc, 803, _job_env("0", "util:30"))
    (proc / "803" / "stat").write_text("803 (x) S")  # truncated
    (sample,) = backend.sample()
    assert [p.pid for p in sample.processes] == [800]
    assert SimulatedBackend("1xT4", "n", proc_root=proc / "missing").sample()[0].processes == []


def test_simulated_reads_each_environment_once_per_process(proc: Path) -> None:
    now = [0.0]
    backend = SimulatedBackend("2xA10", "node-a", proc_root=proc, clock=lambda: now[0])
    write_process(proc, 900, _job_env("0", "util:40"), start=111)
    assert [p.pid for p in backend.sample()[0].processes] == [900]
    # Same PID and start time: the environment is not read again (it cannot change).
    (proc / "900" / "environ").write_bytes(b"CORRAL_NODE=node-z\0")
    now[0] += 60
    assert [p.pid for p in backend.sample()[0].processes] == [900]
    # The PID reused by a new process (another start time): read afresh once its stat
    # is checked again (every RECHECK_SECONDS; in between, the listing is enough).
    write_process(proc, 900, {"CORRAL_NODE": "node-a"}, start=222)
    assert [p.pid for p in backend.sample()[0].processes] == [900]
    now[0] += 10
    assert backend.sample()[0].processes == []
    write_process(proc, 900, _job_env("1"), start=333)
    now[0] += 10
    assert [p.pid for p in backend.sample()[1].processes] == [900]
    # Ended processes disappear.
    for entry in (proc / "900").iterdir():
        entry.unlink()
    (proc / "900").rmdir()
    assert all(s.processes == [] for s in backend.sample())


def test_simulated_samples_are_deterministic(proc: Path) -> None:
    for pid, devices in ((40, "0"), (41, "0,1"), (42, "1")):
        write_process(proc, pid, _job_env(devices, f"util:{pid},mem:{pid}GiB"))
    first = SimulatedBackend("2xH200-141GB", "node-a", proc_root=proc).sample()
    again = SimulatedBackend("2xH200-141GB", "node-a", proc_root=proc).sample()
    assert first == again
    assert [p.pid for p in first[0].processes] == [40, 41]
    assert first[0].utilization_percent == 81.0 and first[1].utilization_percent == 83.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("util:80,mem:20GiB", (80.0, 20 * GIB)),
        ("mem:512MiB", (50.0, 512 * MIB)),
        ("util:75%", (75.0, 2 * GIB)),
        (" UTIL : 10 , MEM : 1.5GB ", (10.0, 1_500_000_000)),
        ("util:150", (100.0, 2 * GIB)),
        ("mem:4096", (50.0, 4096)),
        ("", (50.0, 2 * GIB)),
        ("util:lots,mem:3parsecs", (50.0, 2 * GIB)),
    ],
)
def test_simulated_load_syntax(text: str, expected: tuple[float, int]) -> None:
    assert parse_load(text) == expected


def test_every_simulated_model_has_a_spec() -> None:
    assert set(SPECS) == set(MODELS)
    for spec in SPECS.values():
        assert 0 < spec.idle_watts < spec.power_limit_watts
        assert spec.boost_sm_mhz > 210
