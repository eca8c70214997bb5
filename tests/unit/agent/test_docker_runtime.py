"""The Docker runtime, against the test session's private Docker engine.

`container_config` is checked on its own (no engine); everything else runs real
containers from the busybox test image: limits, labels, mounts and the job's account
as the engine reports them, output copied to ``output.log``, stop with its grace
period, OOM kills, re-adoption by a new runtime (an agent restart) with nothing lost or
doubled, strays reported and left alone.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from agent_testkit import assignment, wait_for

from corral.agent import jobdirs
from corral.agent.mps import MpsSettings
from corral.agent.runtime.base import JobExit, JobHandle, StartError
from corral.agent.runtime.docker import (
    LABEL_NODE,
    DockerRuntime,
    container_config,
    container_name,
)
from corral.agent.runtime.routing import NO_ENGINE, Runtimes
from corral.agent.usermap import JobAccount
from corral.core.schemas import Assignment, ContainerSpec, Mount
from support.docker_engine import DockerEngine

if TYPE_CHECKING:
    import docker

GPU_UUIDS = ["GPU-6f2c1b9e-1d3a-4c0e-9a57-0f1e2d3c4b5a", "GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"]
ALICE = JobAccount(
    name="alice", uid=4321, gid=4300, groups=(4300, 4999), home="/home/alice", shell="/bin/bash",
    switch=True,
)  # fmt: skip


def container_job(
    job_id: int, command: list[str], image: str = "img:1", **overrides: object
) -> Assignment:
    spec = overrides.pop("container", None) or ContainerSpec(image=image)
    return assignment(job_id, command, container=spec, **overrides)


# ---------------------------------------------------------------- the configuration


def test_config_runs_as_the_job_account_with_its_limits_labels_and_mounts() -> None:
    a = container_job(
        7,
        ["python", "train.py"],
        container=ContainerSpec(
            image="pytorch:24.01",
            shm_size_bytes=8 << 30,
            mounts=[
                Mount(source="/data/imagenet", target="/data", read_only=True, volume="imagenet"),
                Mount(source="/home/alice", target="/home/alice", volume="home"),
            ],
        ),
        attempt=2,
        rank=1,
        world_size=2,
        name="train-x",
        cpus=3.5,
        memory_bytes=16 << 30,
        workdir="/work",
        env={"LR": "0.1"},
        gpu_ids=[2, 5],
        gpu_uuids=GPU_UUIDS,
    )
    config = container_config(
        a, ALICE, node_name="gpu-1", gpus_simulated=False, agent_env={"PATH": "/host/bin"}
    )
    assert config["image"] == "pytorch:24.01"
    assert config["command"] == ["python", "train.py"]
    assert config["name"] == "corral-gpu-1-7-2-r1" == container_name("gpu-1", a_key(a))
    assert config["labels"] == {
        "corral.job": "7",
        "corral.job-name": "train-x",
        "corral.attempt": "2",
        "corral.rank": "1",
        "corral.project": "vision",
        "corral.user": "alice",
        "corral.node": "gpu-1",
    }
    assert config["user"] == "4321:4300"
    assert config["group_add"] == ["4999"]
    assert config["security_opt"] == ["no-new-privileges"]
    assert config["working_dir"] == "/work"
    assert config["mem_limit"] == config["memswap_limit"] == 16 << 30
    assert config["nano_cpus"] == 3_500_000_000
    assert config["shm_size"] == 8 << 30
    assert config["network_mode"] == "host"
    assert config["init"] is True
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in config["mounts"]] == [
        ("/data/imagenet", "/data", True),
        ("/home/alice", "/home/alice", False),
    ]
    (request,) = config["device_requests"]
    assert request["Driver"] == "nvidia"
    assert request["DeviceIDs"] == GPU_UUIDS
    assert request["Capabilities"] == [["gpu"]]
    env = config["environment"]
    assert env["NVIDIA_VISIBLE_DEVICES"] == ",".join(GPU_UUIDS)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,5"
    assert env["CORRAL_WORKER_RANK"] == "1"
    assert env["LR"] == "0.1"
    assert "PATH" not in env  # the image's PATH, not the host's
    assert "SHELL" not in env


def a_key(a: Assignment) -> jobdirs.JobKey:
    return jobdirs.JobKey(a.job_id, a.attempt, a.rank)


def test_config_root_image_and_gpu_requests() -> None:
    a = container_job(
        3,
        [],
        container=ContainerSpec(image="jupyter:latest", run_as_root=True),
        gpu_ids=[0],
        gpu_uuids=GPU_UUIDS[:1],
    ).model_copy(update={"command": []})
    simulated = container_config(
        a, ALICE, node_name="n", gpus_simulated=True, agent_env={}, gpu_requests="auto"
    )
    assert "user" not in simulated and "security_opt" not in simulated
    assert simulated["command"] is None  # the image's own CMD
    assert "device_requests" not in simulated  # simulated GPUs: no NVIDIA runtime
    assert simulated["environment"]["NVIDIA_VISIBLE_DEVICES"] == GPU_UUIDS[0]
    forced = container_config(
        a, ALICE, node_name="n", gpus_simulated=True, agent_env={}, gpu_requests="always"
    )
    assert forced["device_requests"][0]["DeviceIDs"] == GPU_UUIDS[:1]
    never = container_config(
        a, ALICE, node_name="n", gpus_simulated=False, agent_env={}, gpu_requests="never"
    )
    assert "device_requests" not in never
    with pytest.raises(StartError, match="not a container job"):
        container_config(assignment(4), ALICE, node_name="n", gpus_simulated=False, agent_env={})


def test_config_of_a_shared_gpu_job_under_mps() -> None:
    a = container_job(
        12, ["python", "serve.py"], gpu_ids=[3], gpu_uuids=GPU_UUIDS[:1],
        gpu_fraction=0.5, gpu_memory_bytes=40 << 30,
    )  # fmt: skip
    mps = MpsSettings(pipe_directories={3: "/run/corral-mps/gpu3"})
    config = container_config(a, ALICE, node_name="n", gpus_simulated=False, agent_env={}, mps=mps)
    env = config["environment"]
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/run/corral-mps/gpu3"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=40960M"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    assert [(m["Source"], m["Target"]) for m in config["mounts"]] == [
        ("/run/corral-mps/gpu3", "/run/corral-mps/gpu3")
    ]
    assert config["ipc_mode"] == "host"
    without = container_config(a, ALICE, node_name="n", gpus_simulated=False, agent_env={})
    assert "CUDA_MPS_PIPE_DIRECTORY" not in without["environment"]
    assert without["mounts"] == [] and "ipc_mode" not in without


def test_a_node_without_docker_refuses_container_jobs(tmp_path: Path) -> None:
    class NoProcess:
        name = "process"

        def start(self, *_: object) -> JobHandle:
            raise AssertionError("a container job must not run as a host process")

    runtimes = Runtimes(NoProcess(), None)  # type: ignore[arg-type]
    with pytest.raises(StartError) as info:
        runtimes.start(container_job(1, ["true"]), ALICE)
    assert str(info.value) == NO_ENGINE
    assert "no container engine (Docker)" in NO_ENGINE


# ---------------------------------------------------------------- with the engine


@pytest.fixture
def client(docker_client: docker.DockerClient) -> docker.DockerClient:
    return docker_client


@pytest.fixture
def node() -> Iterator[str]:
    """A node name of its own per test, so containers never collide across tests."""
    name = f"t{uuid.uuid4().hex[:8]}"
    yield name


@pytest.fixture
def cleanup(client: docker.DockerClient, node: str) -> Iterator[None]:
    yield
    for c in client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={node}"}):
        with contextlib.suppress(Exception):
            c.remove(force=True)


def me() -> JobAccount:
    return JobAccount(
        name="root" if os.geteuid() == 0 else "me",
        uid=os.geteuid(),
        gid=os.getegid(),
        groups=(),
        home="/root",
        shell="/bin/sh",
        switch=os.geteuid() == 0,
    )


def new_runtime(client: docker.DockerClient, state_dir: Path, node: str) -> DockerRuntime:
    return DockerRuntime(client, state_dir, node_name=node, gpus_simulated=True, agent_env={})


def finish(rt: DockerRuntime, handle: JobHandle, timeout: float = 20) -> JobExit:
    return wait_for(lambda: rt.poll(handle), f"container job {handle.key} to end", timeout)


def output(handle: JobHandle) -> str:
    return (handle.job_dir / jobdirs.OUTPUT).read_text()


@pytest.mark.usefixtures("cleanup")
def test_a_container_job_runs_with_its_settings_and_its_output_is_copied(
    client: docker.DockerClient, docker_engine: DockerEngine, tmp_path: Path, node: str
) -> None:
    assert docker_engine.image is not None
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "labels.txt").write_text("cat\n")
    rt = new_runtime(client, tmp_path / "agent", node)
    account = JobAccount(
        name="alice", uid=4321, gid=4300, groups=(4300, 4999), home="/home/alice",
        shell="/bin/sh", switch=True,
    )  # fmt: skip
    a = container_job(
        11,
        [
            "sh",
            "-c",
            'id -u; id -g; id -G; cat /data/labels.txt; echo "$LR $CORRAL_JOB_ID"; pwd; sleep 30',
        ],
        image=docker_engine.image,
        container=ContainerSpec(
            image=docker_engine.image,
            shm_size_bytes=32 << 20,
            mounts=[Mount(source=str(data), target="/data", read_only=True, volume="ds")],
        ),
        cpus=0.5,
        memory_bytes=64 << 20,
        workdir="/tmp",
        env={"LR": "0.1"},
        gpu_ids=[0],
        gpu_uuids=GPU_UUIDS[:1],
    )
    handle = rt.start(a, account)
    assert handle.container is not None and handle.pid is not None
    assert rt.containers() == {handle.container: (11, 0)}
    wait_for(lambda: "/tmp" in output(handle), "the job's output")
    assert output(handle).splitlines() == ["4321", "4300", "4300 4999", "cat", "0.1 11", "/tmp"]
    inspected = client.api.inspect_container(handle.container)
    host = inspected["HostConfig"]
    assert host["Memory"] == 64 << 20
    assert host["MemorySwap"] == 64 << 20
    assert host["NanoCpus"] == 500_000_000
    assert host["ShmSize"] == 32 << 20
    assert host["NetworkMode"] == "host"
    assert host["Init"] is True
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert inspected["Config"]["User"] == "4321:4300"
    assert inspected["Config"]["Labels"]["corral.job"] == "11"
    assert inspected["Config"]["Labels"]["corral.user"] == "alice"
    assert inspected["Name"] == f"/corral-{node}-11-1"
    (mount,) = inspected["Mounts"]
    assert (mount["Source"], mount["Destination"], mount["RW"]) == (str(data), "/data", False)
    env = dict(e.split("=", 1) for e in inspected["Config"]["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == GPU_UUIDS[0]
    rt.stop(handle, 5)
    result = finish(rt, handle)
    assert result == JobExit(143, "stopped with SIGTERM")  # sh died of SIGTERM via tini
    with pytest.raises(Exception, match="No such container"):
        client.api.inspect_container(handle.container)  # removed once reported


def test_a_gpu_device_request_reaches_the_engine(
    client: docker.DockerClient, docker_engine: DockerEngine, node: str
) -> None:
    """Created, never started: there is no NVIDIA runtime here."""
    assert docker_engine.image is not None
    a = container_job(5, ["nvidia-smi"], image=docker_engine.image, gpu_ids=[0, 1],
                      gpu_uuids=GPU_UUIDS)  # fmt: skip
    config = container_config(
        a, me(), node_name=node, gpus_simulated=False, agent_env={}, gpu_requests="auto"
    )
    created = client.containers.create(**config)
    try:
        (request,) = client.api.inspect_container(created.id)["HostConfig"]["DeviceRequests"]
        assert request["Driver"] == "nvidia"
        assert request["DeviceIDs"] == GPU_UUIDS
        assert request["Capabilities"] == [["gpu"]]
    finally:
        created.remove(force=True)


@pytest.mark.usefixtures("cleanup")
def test_exit_code_and_output_of_a_short_job(
    client: docker.DockerClient, docker_engine: DockerEngine, tmp_path: Path, node: str
) -> None:
    assert docker_engine.image is not None
    rt = new_runtime(client, tmp_path / "agent", node)
    handle = rt.start(
        container_job(1, ["sh", "-c", "echo out; echo err >&2; exit 7"], image=docker_engine.image),
        me(),
    )
    assert finish(rt, handle) == JobExit(7)
    assert sorted(output(handle).splitlines()) == ["err", "out"]


@pytest.mark.usefixtures("cleanup")
def test_stop_escalates_to_sigkill_after_the_grace_period(
    client: docker.DockerClient, docker_engine: DockerEngine, tmp_path: Path, node: str
) -> None:
    assert docker_engine.image is not None
    rt = new_runtime(client, tmp_path / "agent", node)
    stubborn = ["sh", "-c", "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.1; done"]
    handle = rt.start(container_job(2, stubborn, image=docker_engine.image), me())
    wait_for(lambda: "ready" in output(handle), "the job to be ready")
    asked = time.monotonic()
    rt.stop(handle, 1.5)
    result = finish(rt, handle)
    took = time.monotonic() - asked
    assert result == JobExit(137, "stopped: killed with SIGKILL after the 1.5 s grace period")
    assert 1.5 <= took < 8, took
    assert "got TERM" in output(handle)  # SIGTERM reached the command, through tini


@pytest.mark.usefixtures("cleanup")
def test_an_oom_kill_is_reported_as_such(
    client: docker.DockerClient, docker_engine: DockerEngine, tmp_path: Path, node: str
) -> None:
    assert docker_engine.image is not None
    rt = new_runtime(client, tmp_path / "agent", node)
    hog = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo "survived ${#x}"'
    handle = rt.start(
        container_job(3, ["sh", "-c", hog], image=docker_engine.image, memory_bytes=16 << 20),
        me(),
    )
    result = finish(rt, handle, timeout=30)
    assert result.exit_code == 137
    assert result.message == (
        "killed by the kernel for running out of memory (its memory limit is 16MiB)"
    )
    assert "survived" not in output(handle)


@pytest.mark.usefixtures("cleanup")
def test_a_restarted_agent_re_adopts_the_container_and_loses_no_output(
    client: docker.DockerClient, docker_engine: DockerEngine, tmp_path: Path, node: str
) -> None:
    assert docker_engine.image is not None
    state = tmp_path / "agent"
    first = new_runtime(client, state, node)
    script = "echo one; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo two; exit 3"
    handle = first.start(container_job(4, ["sh", "-c", script], image=docker_engine.image), me())
    wait_for(lambda: output(handle) == "one\n", "the first line")
    # The agent stops: it lets go of the container, which runs on.
    first.close()
    second = new_runtime(client, state, node)
    adopted = second.adopt(handle.job_dir)
    assert adopted is not None and adopted.adopted
    assert adopted.container == handle.container and adopted.pid == handle.pid
    assert second.strays() == []
    assert handle.container is not None
    client.containers.get(handle.container).exec_run(["touch", "/tmp/go"])
    assert finish(second, adopted) == JobExit(3)
    assert output(handle) == "one\ntwo\n"  # resumed after what was there: nothing doubled


@pytest.mark.usefixtures("cleanup")
def test_a_renamed_container_is_found_by_its_labels(
    client: docker.DockerClient, docker_engine: DockerEngine, tmp_path: Path, node: str
) -> None:
    assert docker_engine.image is not None
    state = tmp_path / "agent"
    first = new_runtime(client, state, node)
    handle = first.start(container_job(13, ["sleep", "30"], image=docker_engine.image), me())
    first.close()
    assert handle.container is not None
    # Recorded before its container existed (an image pull), then renamed by someone.
    meta = jobdirs.read_meta(handle.job_dir)
    assert meta is not None
    jobdirs.write_meta(handle.job_dir, replace(meta, container=None))
    client.containers.get(handle.container).rename(f"renamed-{node}")
    second = new_runtime(client, state, node)
    adopted = second.adopt(handle.job_dir)
    assert adopted is not None and adopted.container == handle.container
    second.stop(adopted, 5)
    assert finish(second, adopted) == JobExit(143, "stopped with SIGTERM")


@pytest.mark.usefixtures("cleanup")
def test_a_container_that_ended_while_the_agent_was_down_is_reported(
    client: docker.DockerClient, docker_engine: DockerEngine, tmp_path: Path, node: str
) -> None:
    assert docker_engine.image is not None
    state = tmp_path / "agent"
    first = new_runtime(client, state, node)
    handle = first.start(
        container_job(6, ["sh", "-c", "echo bye; exit 4"], image=docker_engine.image), me()
    )
    assert handle.container is not None
    wait_for(
        lambda: not client.api.inspect_container(handle.container)["State"]["Running"],
        "the container to end",
    )
    first.close()  # the agent stopped before it noticed
    second = new_runtime(client, state, node)
    adopted = second.adopt(handle.job_dir)
    assert adopted is not None
    assert finish(second, adopted) == JobExit(4)
    assert output(handle) == "bye\n"


@pytest.mark.usefixtures("cleanup")
def test_unknown_containers_of_this_node_are_reported_not_removed(
    client: docker.DockerClient, docker_engine: DockerEngine, tmp_path: Path, node: str
) -> None:
    assert docker_engine.image is not None
    stray = client.containers.run(
        docker_engine.image,
        ["sleep", "30"],
        name=f"corral-{node}-99-1",
        labels={"corral.job": "99", "corral.attempt": "1", "corral.user": "bob", LABEL_NODE: node},
        network_mode="none",
        detach=True,
    )
    other_node = client.containers.run(
        docker_engine.image, ["sleep", "30"], labels={LABEL_NODE: node + "x"},
        network_mode="none", detach=True,
    )  # fmt: skip
    try:
        rt = new_runtime(client, tmp_path / "agent", node)
        assert rt.strays() == [f"corral-{node}-99-1 (job 99 attempt 1, user bob, running)"]
        stray.reload()
        assert stray.status == "running"  # reported, left alone
    finally:
        other_node.remove(force=True)


@pytest.mark.usefixtures("cleanup")
def test_start_errors_are_reasons(
    client: docker.DockerClient, docker_engine: DockerEngine, tmp_path: Path, node: str
) -> None:
    assert docker_engine.image is not None
    rt = new_runtime(client, tmp_path / "agent", node)
    missing = tmp_path / "no-such-dir"
    bad_mount = container_job(
        8,
        ["true"],
        container=ContainerSpec(
            image=docker_engine.image, mounts=[Mount(source=str(missing), target="/d")]
        ),
    )
    with pytest.raises(StartError, match=r"did not start|refused to create") as info:
        rt.start(bad_mount, me())
    assert str(missing) in str(info.value)
    assert client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={node}"}) == []
    # Docker's init starts the command, so a missing program is the job's own failure,
    # with the shell's code for "command not found" and the reason in its output.
    handle = rt.start(container_job(9, ["no-such-program"], image=docker_engine.image), me())
    assert finish(rt, handle) == JobExit(127)
    assert "no-such-program" in output(handle)


@pytest.mark.usefixtures("cleanup")
def test_an_image_that_cannot_be_pulled_ends_the_job_with_the_reason(
    client: docker.DockerClient, tmp_path: Path, node: str
) -> None:
    rt = new_runtime(client, tmp_path / "agent", node)
    # A registry on a closed local port: the pull fails at once, with no traffic out.
    handle = rt.start(container_job(10, ["true"], image="127.0.0.1:9/none/such:1"), me())
    assert handle.pid is None and handle.container is None
    result = finish(rt, handle)
    assert result.exit_code is None
    assert result.message is not None
    assert result.message.startswith("could not pull image 127.0.0.1:9/none/such:1")
