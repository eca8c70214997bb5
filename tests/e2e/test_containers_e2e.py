"""End to end: container jobs through the real server, a real agent and the test
session's private Docker engine, driven through the `corral` CLI.

One node has Docker (its agent is pointed at the private engine), one has none. A
container job runs on the first with its volume, limits and output; a container job
that can run nowhere waits with a reason that says Docker; and after the agent is
SIGKILLed and started again, the container it left running is re-adopted and finishes
normally, its output whole.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support.cluster import LocalCluster, wait_for
from support.docker_engine import DockerEngine

if TYPE_CHECKING:
    import docker

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, docker_engine: DockerEngine
) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("containers"))
    try:
        c.start_server()
        c.start_agent("dk-1", "2xA100-80GB", "--docker-host", docker_engine.base_url)
        c.start_agent("plain-1", "2xA100-80GB", "--pool", "plain")
        yield c
    finally:
        c.stop()
        client = docker_engine.client()
        for container in client.containers.list(all=True, filters={"label": "corral.node"}):
            container.remove(force=True)
        client.close()


@pytest.fixture(scope="module")
def shared(cluster: LocalCluster) -> Path:
    """A host directory defined as the volume ``scratch`` (read-write)."""
    path = cluster.root / "scratch"
    path.mkdir()
    path.chmod(0o777)
    (path / "labels.txt").write_text("cat\ndog\n")
    cluster.cli("volume", "create", "scratch", str(path), "--description", "test data")
    return path


def test_only_the_node_with_docker_says_it_has_an_engine(cluster: LocalCluster) -> None:
    nodes = {n["name"]: n for n in cluster.cli_json("nodes")}
    assert nodes["dk-1"]["container_engine"].startswith("docker ")
    assert nodes["plain-1"]["container_engine"] is None
    shown = cluster.cli("node", "dk-1").stdout
    assert f"Containers:     {nodes['dk-1']['container_engine']}" in shown
    assert "none (container jobs are not placed here)" in cluster.cli("node", "plain-1").stdout


def test_a_container_job_runs_with_its_volume_limits_and_output(
    cluster: LocalCluster, docker_engine: DockerEngine, shared: Path
) -> None:
    assert docker_engine.image is not None
    cluster.cli(
        "submit", "boxed", "--image", docker_engine.image, "--gpus", "1",
        "--volume", "scratch:/data:ro", "--memory", "64MiB", "--cpus", "0.5",
        "--shm-size", "16MiB", "--",
        "sh", "-c",
        'cat /data/labels.txt; echo "gpus=$NVIDIA_VISIBLE_DEVICES"; '
        "df -m /dev/shm | tail -1; touch /data/x 2>/dev/null || echo read-only",
    )  # fmt: skip
    job = cluster.wait_job("boxed", {"succeeded", "failed"}, timeout=60)
    assert job["state"] == "succeeded", job
    assert job["node"] == "dk-1"
    logs = cluster.cli("logs", "boxed").stdout
    assert "cat\ndog\n" in logs
    assert f"gpus={job['gpu_uuids'][0]}" in logs
    shm_line = next(line for line in logs.splitlines() if "/dev/shm" in line)
    assert shm_line.split()[1] == "16"  # 1M-blocks: the job's --shm-size
    assert "read-only" in logs
    shown = cluster.cli("get", "boxed").stdout
    assert docker_engine.image in shown and "scratch" in shown


def test_a_container_job_without_a_command_runs_its_images_own(
    cluster: LocalCluster, docker_engine: DockerEngine
) -> None:
    """The busybox test image's CMD is /bin/sh, which ends at once with no input."""
    assert docker_engine.image is not None
    cluster.cli("submit", "image-cmd", "--image", docker_engine.image)
    job = cluster.wait_job("image-cmd", {"succeeded", "failed"}, timeout=60)
    assert job["state"] == "succeeded" and job["command"] == [], job
    shown = cluster.cli("get", "image-cmd").stdout
    (line,) = [line for line in shown.splitlines() if line.startswith("Command:")]
    assert line.split(":", 1)[1].strip() == "(the image's own command)"
    assert "(pid None)" not in shown


def test_a_container_job_with_no_docker_node_waits_with_the_reason(
    cluster: LocalCluster, docker_engine: DockerEngine
) -> None:
    assert docker_engine.image is not None
    cluster.cli("submit", "nowhere", "--image", docker_engine.image, "--pool", "plain",
                "--", "true")  # fmt: skip
    job = wait_for(lambda: (j := cluster.job("nowhere"))["reason"] and j, 20, "a pending reason")
    assert job["state"] == "pending"
    assert "container engine (Docker)" in job["reason"]
    assert "plain" in job["reason"]
    cluster.cli("delete", "nowhere")


def test_the_container_outlives_a_killed_agent_and_is_re_adopted(
    cluster: LocalCluster,
    docker_engine: DockerEngine,
    docker_client: docker.DockerClient,
    shared: Path,
) -> None:
    assert docker_engine.image is not None
    script = "echo one; while [ ! -e /data/go ]; do sleep 0.1; done; echo two; exit 3"
    cluster.cli(
        "submit", "survivor", "--image", docker_engine.image, "--volume", "scratch:/data",
        "--", "sh", "-c", script,
    )  # fmt: skip
    wait_for(lambda: "one" in cluster.cli("logs", "survivor").stdout, 60, "the first line")
    (container,) = docker_client.containers.list(filters={"label": "corral.job-name=survivor"})
    agent = cluster.agents["dk-1"]
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)
    container.reload()
    assert container.status == "running"  # the job did not die with its agent
    cluster.start_agent("dk-1", "2xA100-80GB", "--docker-host", docker_engine.base_url)
    (shared / "go").touch()
    job = cluster.wait_job("survivor", {"succeeded", "failed"}, timeout=60)
    assert job["state"] == "failed" and job["exit_code"] == 3, job
    assert cluster.cli("logs", "survivor").stdout == "one\ntwo\n"
    assert "re-adopted" in cluster.log("agent-dk-1.log")
    assert (
        docker_client.containers.list(all=True, filters={"label": "corral.job-name=survivor"}) == []
    )
