"""End to end: a job on half a GPU whose memory grows past its share, on a real server
with a real agent (simulated GPUs) on 127.0.0.1, driven through the `corral` CLI.

The job declares its load to the simulated back-end: 10 GiB at first, within its
40 GiB share of an 80 GiB GPU, then a process it starts a second later adds 50 GiB.
The project's policy decides what the agent's watchdog does: stop the job, or warn.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from corral.server.api.deps import SESSION_COOKIE
from support.cluster import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

DONE = {"succeeded", "failed", "stopped", "lost"}
GROWS = "echo started; sleep 1; CORRAL_SIM_LOAD=mem:50GiB sleep 600 & wait"
OVER = "exceeded its GPU memory share (used 60GiB of its 40GiB share on GPU"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("e2e-gpushare"))
    try:
        c.start_server()
        c.start_agent("share-a", "2xA100-80GB")
        c.cli("project", "create", "strict", "--quota", "1", "--gpu-memory-policy", "stop")
        c.cli("project", "create", "lenient", "--quota", "1")  # the default: warn
        yield c
    finally:
        c.stop()


def submit_growing_job(cluster: LocalCluster, name: str, project: str) -> None:
    cluster.cli(
        "submit", name, "--project", project, "-g", "0.5",
        "-e", "CORRAL_SIM_LOAD=util:40,mem:10GiB", "--", "sh", "-c", GROWS,
    )  # fmt: skip


def sampled_at(cluster: LocalCluster, node: str) -> float:
    """When the newest sample the server has of ``node`` was taken (epoch seconds)."""
    [found] = [n for n in cluster.api("/metrics/now")["nodes"] if n["name"] == node]
    return datetime.fromisoformat(found["sampled_at"]).timestamp() if found["sampled_at"] else 0


def notices(job: Any) -> list[str]:
    return [e["message"] for e in job["events"] if e["type"] == "notice"]


def test_policy_stop_ends_the_job_saying_it_exceeded_its_share(cluster: LocalCluster) -> None:
    submit_growing_job(cluster, "hog", "strict")
    job = cluster.wait_job("hog", DONE, timeout=60, project="strict")
    assert job["state"] == "failed", job
    assert OVER in job["reason"]
    assert [n.split(":")[-1].strip() for n in notices(job)] == [
        "stopping it (its project's policy is stop)"
    ]
    shown = cluster.cli("get", "hog", "--project", "strict").stdout
    assert "exceeded its GPU memory share" in shown


def test_policy_warn_tells_the_user_and_lets_the_job_run(cluster: LocalCluster) -> None:
    submit_growing_job(cluster, "greedy", "lenient")
    job = wait_for(
        lambda: (j := cluster.job("greedy", "lenient")) and notices(j) and j,
        60,
        "a notice on job greedy",
    )
    [notice] = notices(job)
    assert notice.startswith(OVER)
    assert "its project's policy is warn: it keeps running" in notice
    assert job["state"] == "running"

    shown = cluster.cli("get", "greedy", "--project", "lenient").stdout
    assert "exceeded its GPU memory share" in shown
    page = httpx.get(
        f"{cluster.url}/jobs/lenient/greedy",
        cookies={SESSION_COOKIE: cluster.admin_token},
        timeout=10,
    )
    assert page.status_code == 200 and "exceeded its GPU memory share" in page.text

    # Warned once: samples taken well after the notice still see it over its share,
    # and it keeps running with no second notice.
    since = sampled_at(cluster, "share-a")
    wait_for(
        lambda: sampled_at(cluster, "share-a") - since >= 5, 30, "five more seconds of samples"
    )
    assert cluster.job("greedy", "lenient")["state"] == "running"
    assert len(notices(cluster.job("greedy", "lenient"))) == 1
    cluster.cli("delete", "greedy", "--project", "lenient")
    assert cluster.wait_job("greedy", DONE, timeout=60, project="lenient")["state"] == "stopped"
