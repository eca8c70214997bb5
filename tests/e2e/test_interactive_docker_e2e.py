"""End to end: a terminal in a container job (``docker exec`` through the agent), on the
test's private Docker engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_interactive_e2e import PROMPT, _corral

from support.cluster import LocalCluster
from support.docker_engine import DockerEngine

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(
    docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("interactive-docker"))
    try:
        c.start_server()
        c.start_agent("n1", "1xA100-80GB", "--docker-host", docker_engine.base_url)
        yield c
    finally:
        c.stop()


def test_bash_and_exec_in_a_container_job(
    cluster: LocalCluster, docker_engine: DockerEngine
) -> None:
    cluster.cli("submit", "box", "--interactive", "--image", docker_engine.image, "-e", "X=in-box")
    cluster.wait_job("box", {"running"})
    with _corral(cluster, "bash", "box") as term:
        term.expect(PROMPT)
        term.send(b'echo "x=$X job=$CORRAL_JOB_NAME"; stty size\r')
        term.expect(r"x=in-box job=box")
        term.expect(r"24 80")
        term.resize(33, 99)
        term.expect(PROMPT)
        # The marker comes from the foreground program, once it holds the terminal.
        term.send(b"sh -c 'echo sleeping; exec sleep 60'\r")
        term.expect(r"\nsleeping")
        term.send(b"\x03")  # interrupts the sleep: the prompt is back well before 60 s
        term.expect(PROMPT, timeout=20)
        term.send(b"stty size; exit 5\r")
        term.expect(r"33 99")
        assert term.wait() == 5
    r = cluster.cli(
        "exec", "box", "--", "sh", "-c", "cat /proc/1/cgroup >/dev/null; exit 9", check=False
    )
    assert r.returncode == 9, r.stderr
