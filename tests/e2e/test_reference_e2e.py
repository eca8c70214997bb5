"""The reference scenario end to end (scenario-format.md, from the Run:ai report).

Two real agents x 8 simulated GPUs; projects team-a quota 4, team-b 2, team-c 2,
team-d 8. Teams a, b, c each submit 10 one-GPU train jobs: steady state a 8, b 4, c 4.
Then team-d submits 8: d gets 8 and a, b, c fall back to 4, 2, 2; the preempted jobs
really receive SIGTERM, are pending again, and say why.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.cluster import LocalCluster, wait_for

pytestmark = pytest.mark.e2e

# Each job records the SIGTERM it gets, then exits as a well-behaved trainer would.
JOB = [
    "sh",
    "-c",
    "trap 'echo got SIGTERM; exit 143' TERM; echo started; while true; do sleep 0.2; done",
]
HOLDING = {"bound", "starting", "running"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path)
    try:
        c.start_server()
        c.start_agent("ref-0", "8xA100-80GB")
        c.start_agent("ref-1", "8xA100-80GB")
        yield c
    finally:
        c.stop()


def _submit(c: LocalCluster, project: str, name: str) -> None:
    r = httpx.post(
        f"{c.url}/api/v1/jobs",
        timeout=10,
        headers={"Authorization": f"Bearer {c.admin_token}"},
        json={"name": name, "project": project, "gpus": 1, "command": JOB, "grace_seconds": 5},
    )
    assert r.status_code == 201, r.text


def _settled(c: LocalCluster, expected: dict[str, int]) -> bool:
    jobs = c.api("/jobs")["jobs"]
    running = Counter(j["project"] for j in jobs if j["state"] == "running")
    moving = [j for j in jobs if j["state"] in ("bound", "starting", "stopping")]
    return not moving and all(running[p] == n for p, n in expected.items())


def test_reference_scenario_end_to_end(cluster: LocalCluster) -> None:
    c = cluster
    for name, quota in (("team-a", 4), ("team-b", 2), ("team-c", 2), ("team-d", 8)):
        c.cli("project", "create", name, "--quota", str(quota))
    for team in ("a", "b", "c"):
        for i in range(10):
            _submit(c, f"team-{team}", f"{team}-{i}")

    wait_for(
        lambda: _settled(c, {"team-a": 8, "team-b": 4, "team-c": 4}),
        60,
        "phase 1 steady state a 8, b 4, c 4",
    )
    time.sleep(3)  # several more cycles: nothing moves (no ping-pong)
    assert _settled(c, {"team-a": 8, "team-b": 4, "team-c": 4, "team-d": 0})
    projects = {p["name"]: p for p in c.cli_json("project", "list")}
    assert {n: projects[n]["fair_share"] for n in ("team-a", "team-b", "team-c", "team-d")} == {
        "team-a": 8,
        "team-b": 4,
        "team-c": 4,
        "team-d": 0,
    }

    for i in range(8):
        _submit(c, "team-d", f"d-{i}")
    wait_for(
        lambda: _settled(c, {"team-a": 4, "team-b": 2, "team-c": 2, "team-d": 8}),
        60,
        "phase 2: d 8, a 4, b 2, c 2",
    )
    time.sleep(3)
    assert _settled(c, {"team-a": 4, "team-b": 2, "team-c": 2, "team-d": 8})

    jobs = c.api("/jobs")["jobs"]
    held = [(j["node"], g) for j in jobs if j["state"] in HOLDING for g in j["gpu_ids"]]
    assert len(held) == len(set(held)) == 16

    # Phase 1 may already move a few jobs (team-a's came first and gives some back as
    # b and c arrive); phase 2's reclaim is what team-d's jobs preempted.
    def stopped_by_d(job: dict[str, str]) -> bool:
        events = c.job(job["name"], job["project"])["events"]
        return any(
            e["type"] == "stopping" and e["message"].startswith("preempted by d-") for e in events
        )

    preempted = [j for j in jobs if stopped_by_d(j)]
    assert Counter(j["project"] for j in preempted) == {"team-a": 4, "team-b": 2, "team-c": 2}
    for job in preempted:
        assert job["state"] == "pending"
        detail = c.job(job["name"], job["project"])
        stop = [e for e in detail["events"] if e["type"] == "stopping"][-1]
        assert stop["message"].startswith("preempted by d-") and "of team-d" in stop["message"]
        assert "reclaim" in stop["message"]
        assert "preempted by d-" in job["reason"]
        # The process really got SIGTERM (its first attempt's output says so).
        r = httpx.get(
            f"{c.url}/api/v1/jobs/{job['project']}/{job['name']}/logs",
            params={"attempt": 1},
            timeout=10,
            headers={"Authorization": f"Bearer {c.admin_token}"},
        )
        assert "got SIGTERM" in r.text, r.text

    queue = c.cli("queue").stdout
    assert "preempted by d-" in queue
