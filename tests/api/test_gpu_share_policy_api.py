"""A project's GPU memory policy, and what the agent's watchdog tells the server.

The agent's side (the watchdog, MPS) is tested in tests/unit/agent; here: the setting
(API), the assignment that carries it to the node, and the ``notice`` report that
becomes a job event without changing the job's state.
"""

from __future__ import annotations

from typing import Any

from api.conftest import Harness

GiB = 1024**3
OVER = "exceeded its GPU memory share (used 60GiB of its 40GiB share on GPU 0)"


def report(job: Any, state: str, **fields: Any) -> dict[str, Any]:
    return {"job_id": job["id"], "attempt": job["attempt"], "state": state, **fields}


def running_half_gpu_job(server: Harness, project: str = "default") -> tuple[str, Any]:
    node = server.register("n1", gpus=1)
    assert server.submit("half", gpus=0.5, project=project).status_code == 201
    server.cycle()
    job = server.job("half", project)
    server.sync(node, [report(job, "starting"), report(job, "running", pid=42)])
    job = server.job("half", project)
    assert job["state"] == "running"
    return node, job


def test_the_policy_defaults_to_warn_and_admins_change_it(server: Harness) -> None:
    assert server.post("/projects", {"name": "p", "quota": 1}).status_code == 201
    assert server.get("/projects/p")["gpu_memory_policy"] == "warn"
    r = server.http.patch(
        "/api/v1/projects/p", headers=server.h(server.admin), json={"gpu_memory_policy": "stop"}
    )
    assert r.status_code == 200, r.text
    assert server.get("/projects/p")["gpu_memory_policy"] == "stop"
    assert server.get("/projects/p")["quota"] == 1  # nothing else changed
    r = server.post("/projects", {"name": "q", "gpu_memory_policy": "kill"})
    assert r.status_code == 422
    assert "gpu_memory_policy" in r.text


def test_the_assignment_carries_the_projects_policy(server: Harness) -> None:
    server.post("/projects", {"name": "strict", "quota": 1, "gpu_memory_policy": "stop"})
    node, _ = running_half_gpu_job(server, "strict")
    [a] = server.sync(node)["assignments"]
    assert (a["gpu_memory_bytes"], a["gpu_memory_policy"]) == (40 * GiB, "stop")


def test_a_notice_becomes_a_job_event_and_changes_nothing_else(server: Harness) -> None:
    node, job = running_half_gpu_job(server)
    notice = report(job, "notice", message=f"{OVER}: other jobs may run out of memory")
    server.sync(node, [notice])
    server.sync(node, [notice])  # resent after a lost answer: recorded once
    after = server.job("half")
    assert after["state"] == "running" and after["reason"] is None
    notices = [e for e in after["events"] if e["type"] == "notice"]
    assert [e["message"] for e in notices] == [notice["message"]]
    assert notices[0]["actor"] == "n1"


def test_a_notice_from_a_node_that_does_not_run_the_job_is_ignored(server: Harness) -> None:
    _, job = running_half_gpu_job(server)
    other = server.register("n2", gpus=1)
    server.sync(other, [report(job, "notice", message="forged")])
    assert not [e for e in server.job("half")["events"] if e["type"] == "notice"]


def test_a_job_the_agent_stopped_for_its_memory_ends_failed_saying_why(
    server: Harness,
) -> None:
    node, job = running_half_gpu_job(server)
    message = f"{OVER}; stopped with SIGTERM"
    server.sync(node, [report(job, "exited", exit_code=143, message=message)])
    ended = server.job("half")
    assert ended["state"] == "failed"
    assert ended["reason"] == f"exited with code 143: {message}"
    assert ended["events"][-1]["message"] == f"exited with code 143 on n1: {message}"
