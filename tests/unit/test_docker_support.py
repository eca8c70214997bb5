"""The test suite's own Docker engine works, does what the Docker runtime will need, and
leaves nothing behind.

These run real containers in the session's private engine (the ``docker_engine``
fixture), from the busybox image. Whatever a container here proves -- exit codes and
logs come back, limits and GPU requests reach the engine, the OOM killer is reported,
``stop`` escalates to SIGKILL -- is what the agent's Docker runtime will rely on.
GPU requests are only created and inspected, never started: there is no NVIDIA
runtime on the test machines.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from support.docker_engine import (
    CGROUP_ROOT,
    TEST_IMAGE,
    DockerEngine,
    DockerUnavailable,
    build_busybox_image,
    skip_unavailable,
)

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

GPU_UUID = "GPU-6f2c1b9e-1d3a-4c0e-9a57-0f1e2d3c4b5a"


@pytest.fixture
def client(docker_client: docker.DockerClient) -> docker.DockerClient:
    return docker_client


@contextlib.contextmanager
def container(client: docker.DockerClient, image: str, **kwargs: Any) -> Iterator[Container]:
    """``client.containers.create(image, …)``, force-removed afterwards."""
    kwargs.setdefault("network_mode", "none")
    c = client.containers.create(image, **kwargs)
    try:
        yield c
    finally:
        with contextlib.suppress(Exception):
            c.remove(force=True)


def wait_for_log(c: Container, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text.encode() not in c.logs():
        assert time.monotonic() < deadline, f"no {text!r} in the logs: {c.logs()!r}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


# ---------------------------------------------------------------- the engine itself


def test_engine_is_private_and_has_the_busybox_image(
    docker_engine: DockerEngine, client: docker.DockerClient
) -> None:
    root = docker_engine.root
    assert root is not None
    assert docker_engine.base_url == f"unix://{root}/docker.sock"
    assert docker_engine.base_url.startswith("unix:///tmp/corral-dk-")
    assert len(str(docker_engine.exec_root / "containerd" / "containerd.sock.ttrpc")) < 108
    assert client.ping()
    info = client.info()
    assert info["DockerRootDir"] == str(root / "data")
    # --bridge=none: no bridge network (and so no docker0 interface) was created.
    assert sorted(str(n.name) for n in client.networks.list()) == ["host", "none"]
    image = client.images.get(docker_engine.image or "")
    assert docker_engine.image == TEST_IMAGE
    assert TEST_IMAGE in image.tags
    assert image.attrs["Config"]["Cmd"] == ["/bin/sh"]
    # Idempotent: building again reuses the tag.
    assert build_busybox_image(client, TEST_IMAGE) == image.id


# ---------------------------------------------------------------- what the runtime needs


def test_exit_code_and_logs_come_back(
    docker_engine: DockerEngine, client: docker.DockerClient
) -> None:
    assert docker_engine.image is not None
    with container(
        client, docker_engine.image, command=["sh", "-c", "echo hello; echo oops >&2; exit 3"]
    ) as c:
        c.start()
        assert c.wait(timeout=30)["StatusCode"] == 3
        assert c.logs(stdout=True, stderr=False) == b"hello\n"
        assert c.logs(stdout=False, stderr=True) == b"oops\n"
        c.reload()
        assert c.attrs["State"]["Status"] == "exited"
        assert c.attrs["State"]["ExitCode"] == 3
        assert c.attrs["State"]["OOMKilled"] is False


def test_every_job_setting_reaches_the_engine(
    docker_engine: DockerEngine, client: docker.DockerClient
) -> None:
    """Labels, limits, env, workdir, user and a GPU request, as the runtime will create
    them; created only, since starting a GPU request needs the NVIDIA runtime."""
    import docker

    assert docker_engine.image is not None
    labels = {"corral.job": "train-1", "corral.job-id": "42", "corral.worker": "0"}
    with container(
        client,
        docker_engine.image,
        command=["sh", "-c", "nvidia-smi"],
        labels=labels,
        mem_limit="256m",
        nano_cpus=1_500_000_000,
        shm_size="64m",
        environment={"CORRAL_JOB": "train-1", "WITH_SPACE": "a b"},
        working_dir="/tmp",
        user="1000:1000",
        device_requests=[docker.types.DeviceRequest(device_ids=[GPU_UUID], capabilities=[["gpu"]])],
    ) as c:
        c.reload()  # a fresh inspect
        attrs = c.attrs
        assert attrs["State"]["Status"] == "created"
        config, host = attrs["Config"], attrs["HostConfig"]
        assert config["Labels"] == labels
        assert host["Memory"] == 256 * 2**20
        assert host["NanoCpus"] == 1_500_000_000
        assert host["ShmSize"] == 64 * 2**20
        assert {"CORRAL_JOB=train-1", "WITH_SPACE=a b"} <= set(config["Env"])
        assert config["WorkingDir"] == "/tmp"
        assert config["User"] == "1000:1000"
        assert host["NetworkMode"] == "none"
        (request,) = host["DeviceRequests"]
        assert request["DeviceIDs"] == [GPU_UUID]
        assert request["Capabilities"] == [["gpu"]]
        assert request["Driver"] == ""
        assert request["Count"] == 0
        # The labels are how the runtime will find its containers again.
        found = client.containers.list(all=True, filters={"label": "corral.job-id=42"})
        assert [f.id for f in found] == [c.id]


def test_settings_take_effect_in_a_running_container(
    docker_engine: DockerEngine, client: docker.DockerClient
) -> None:
    assert docker_engine.image is not None
    script = (
        'echo "env=$CORRAL_JOB"; echo "cwd=$(pwd)"; echo "id=$(id)"; '
        'echo "mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"; '
        'echo "quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)"; '
        'echo "shm=$(df -k /dev/shm | tail -n 1)"'
    )
    with container(
        client,
        docker_engine.image,
        command=["sh", "-c", script],
        environment={"CORRAL_JOB": "train-1"},
        working_dir="/tmp",
        user="1000:1000",
        mem_limit="64m",
        nano_cpus=500_000_000,
        shm_size="8m",
    ) as c:
        c.start()
        assert c.wait(timeout=30)["StatusCode"] == 0
        out = dict(line.split("=", 1) for line in c.logs().decode().splitlines() if "=" in line)
    assert out["env"] == "train-1"
    assert out["cwd"] == "/tmp"
    assert out["id"] == "uid=1000(user1000) gid=1000(user1000) groups=1000(user1000)"
    assert out["mem"] == str(64 * 2**20)
    assert out["quota"] == "50000"  # 0.5 CPU of the 100 ms period
    assert out["shm"].split()[1] == "8192"


def test_memory_limit_ends_in_oom_kill(
    docker_engine: DockerEngine, client: docker.DockerClient
) -> None:
    assert docker_engine.image is not None
    hog = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo "survived ${#x}"; sleep 1'
    with container(
        client,
        docker_engine.image,
        command=["sh", "-c", hog],
        mem_limit="20m",
        memswap_limit="20m",
    ) as c:
        c.start()
        assert c.wait(timeout=60)["StatusCode"] == 137
        c.reload()
        assert c.attrs["State"]["OOMKilled"] is True, c.attrs["State"]
        assert b"survived" not in c.logs()


def test_stop_escalates_to_sigkill_after_the_grace(
    docker_engine: DockerEngine, client: docker.DockerClient
) -> None:
    assert docker_engine.image is not None
    with container(
        client,
        docker_engine.image,
        command=["sh", "-c", 'trap "" TERM; echo ready; sleep 100'],
    ) as c:
        c.start()
        wait_for_log(c, "ready")
        began = time.monotonic()
        c.stop(timeout=1)
        took = time.monotonic() - began
        c.reload()
        state = c.attrs["State"]
    assert 1.0 <= took < 10, f"stop(timeout=1) took {took:.2f} s"
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 137  # SIGKILL: the TERM was ignored
    assert state["OOMKilled"] is False


# ---------------------------------------------------------------- clean-up


def _start_engine_with_a_running_container() -> tuple[DockerEngine, dict[str, int]]:
    """A separate engine (stopping it cannot disturb the session's), running ``sleep``."""
    engine = DockerEngine()
    try:
        engine.start()
    except DockerUnavailable as exc:
        skip_unavailable(exc)
    try:
        client = engine.client()
        try:
            assert engine.image is not None
            c = client.containers.run(
                engine.image,
                ["sh", "-c", "echo ready; exec sleep 100"],
                network_mode="none",
                detach=True,
            )
            wait_for_log(c, "ready")
            c.reload()
        finally:
            client.close()
        assert engine.pid is not None and engine.root is not None
        pids = {"dockerd": engine.pid, "container": int(c.attrs["State"]["Pid"])}
        pids["containerd"] = int(
            (engine.exec_root / "containerd" / "containerd.pid").read_text().strip()
        )
        (shim,) = [
            int(line.split()[0])
            for line in engine.leftover_processes()
            if "containerd-shim" in line
        ]
        pids["shim"] = shim
        assert all(_alive(pid) for pid in pids.values()), pids
    except BaseException:
        engine.stop()
        raise
    return engine, pids


def _assert_all_gone(engine: DockerEngine, pids: dict[str, int]) -> None:
    root = engine.root
    assert root is not None
    assert {name: pid for name, pid in pids.items() if _alive(pid)} == {}
    assert engine.leftover_processes() == []
    assert not root.exists()
    assert not list(CGROUP_ROOT.glob(f"*/{root.name}"))
    assert str(root) not in Path("/proc/self/mountinfo").read_text()


@pytest.mark.docker
def test_stop_leaves_nothing_running() -> None:
    engine, pids = _start_engine_with_a_running_container()
    assert engine.startup_seconds is not None and engine.startup_seconds < 20
    engine.stop()
    assert not engine.running
    _assert_all_gone(engine, pids)
    engine.stop()  # idempotent


@pytest.mark.docker
def test_stop_cleans_up_after_a_crashed_dockerd() -> None:
    """dockerd SIGKILLed (no clean shutdown): its containerd, the shim and the container
    outlive it, and stop() must still find and kill them, by PID."""
    engine, pids = _start_engine_with_a_running_container()
    try:
        os.kill(pids["dockerd"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while engine.running:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _alive(pids["container"]) and _alive(pids["shim"])
    finally:
        engine.stop()
    _assert_all_gone(engine, pids)
