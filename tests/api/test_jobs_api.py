"""Submitting, listing, getting and deleting jobs through the API."""

from __future__ import annotations

from typing import Any

import pytest

from api.conftest import Harness
from corral.server.api import jobs as jobs_api


def test_submit_binds_on_cycle_and_reports_drive_the_state_machine(server: Harness) -> None:
    node = server.register("n1", gpus=4)
    r = server.submit("train-1", gpus=2, command=["python", "train.py"], env={"LR": "0.1"})
    assert r.status_code == 201
    assert r.json()["state"] == "pending"
    server.cycle()
    job = server.job("train-1")
    assert job["state"] == "bound"
    assert job["node"] == "n1"
    assert job["gpu_ids"] == [0, 1]
    assert job["gpu_uuids"] == ["GPU-n1-0", "GPU-n1-1"]

    desired = server.sync(node)
    [a] = desired["assignments"]
    assert (a["name"], a["gpu_ids"], a["attempt"], a["stop"]) == ("train-1", [0, 1], 1, False)
    assert a["env"] == {"LR": "0.1"} and a["command"] == ["python", "train.py"]

    server.sync(node, [{"job_id": a["job_id"], "attempt": 1, "state": "running", "pid": 42}])
    assert server.job("train-1")["state"] == "running"
    assert server.job("train-1")["started_at"] is not None
    server.sync(node, [{"job_id": a["job_id"], "attempt": 1, "state": "exited", "exit_code": 3}])
    job = server.job("train-1")
    assert (job["state"], job["exit_code"], job["reason"]) == ("failed", 3, "exited with code 3")
    assert [e["type"] for e in job["events"]] == ["submitted", "bound", "running", "failed"]
    # Its GPUs are free again.
    assert server.get("/nodes/n1")["gpus_allocated"] == 0


def test_no_two_jobs_ever_hold_the_same_gpu(server: Harness) -> None:
    server.register("n1", gpus=4)
    server.register("n2", gpus=2)
    for i in range(8):
        assert server.submit(f"j{i}", gpus=1 + i % 2).status_code == 201
    server.cycle()
    held: set[tuple[str, int]] = set()
    jobs = server.get("/jobs")["jobs"]
    for job in jobs:
        for gpu in job["gpu_ids"]:
            assert (job["node"], gpu) not in held
            held.add((job["node"], gpu))
    assert len(held) == 6  # all GPUs of the cluster are in use, none twice
    waiting = [j for j in jobs if j["state"] == "pending"]
    # Every job left waiting says why, in the scheduler's words (not the submit default).
    assert waiting and all(
        j["reason"] and j["reason"] != "waiting for the scheduler" for j in waiting
    )


def test_best_fit_keeps_a_whole_node_free(server: Harness) -> None:
    server.register("big", gpus=8)
    server.register("small", gpus=2)
    server.submit("one", gpus=1)
    server.cycle()
    assert server.job("one")["node"] == "small"
    server.submit("eight", gpus=8)
    server.cycle()
    assert server.job("eight")["node"] == "big"


def test_exit_zero_succeeds_and_exit_report_is_idempotent(server: Harness) -> None:
    node = server.register("n1", gpus=1)
    server.submit("ok", gpus=1)
    server.cycle()
    job_id = server.job("ok")["id"]
    done = {"job_id": job_id, "attempt": 1, "state": "exited", "exit_code": 0}
    server.sync(node, [{"job_id": job_id, "attempt": 1, "state": "running", "pid": 1}, done])
    server.sync(node, [done, {"job_id": job_id, "attempt": 1, "state": "running", "pid": 1}])
    job = server.job("ok")
    assert (job["state"], job["exit_code"]) == ("succeeded", 0)
    assert len([e for e in job["events"] if e["type"] == "succeeded"]) == 1


def test_stale_attempt_and_foreign_node_reports_are_ignored(server: Harness) -> None:
    n1 = server.register("n1", gpus=1)
    n2 = server.register("n2", gpus=0)
    server.submit("j", gpus=1)
    server.cycle()
    job_id = server.job("j")["id"]
    server.sync(n1, [{"job_id": job_id, "attempt": 7, "state": "exited", "exit_code": 0}])
    server.sync(n2, [{"job_id": job_id, "attempt": 1, "state": "exited", "exit_code": 0}])
    assert server.job("j")["state"] == "bound"


def test_delete_pending_job_stops_it_at_once_and_frees_the_name(server: Harness) -> None:
    server.submit("p", gpus=1)
    r = server.http.delete("/api/v1/jobs/default/p", headers=server.h(server.admin))
    assert r.status_code == 200 and r.json()["state"] == "stopped"
    assert server.get("/jobs")["jobs"] == []
    assert [j["name"] for j in server.get("/jobs", all=True)["jobs"]] == ["p"]
    assert server.submit("p", gpus=1).status_code == 201  # name reusable after delete


def test_delete_running_job_asks_its_node_to_stop_it(server: Harness) -> None:
    node = server.register("n1", gpus=2)
    server.submit("r", gpus=2, grace_seconds=5)
    server.cycle()
    job_id = server.job("r")["id"]
    first = server.sync(node, [{"job_id": job_id, "attempt": 1, "state": "running", "pid": 9}])
    r = server.http.delete("/api/v1/jobs/default/r", headers=server.h(server.admin))
    assert r.json()["state"] == "stopping"
    desired = server.sync(node, seen=first["generation"])
    assert desired["generation"] > first["generation"]
    [a] = desired["assignments"]
    assert a["stop"] is True and a["grace_seconds"] == 5
    server.sync(node, [{"job_id": job_id, "attempt": 1, "state": "exited", "exit_code": 143}])
    job = server.job("r")
    assert (job["state"], job["exit_code"], job["reason"]) == ("stopped", 143, "deleted by admin")
    assert server.sync(node)["assignments"] == []


def test_name_taken_in_project_is_refused(server: Harness) -> None:
    assert server.submit("dup").status_code == 201
    r = server.submit("dup")
    assert r.status_code == 409
    assert "already exists" in r.json()["error"]["message"]


def test_user_must_be_member_of_the_project(server: Harness) -> None:
    assert server.post("/projects", {"name": "team-a"}).status_code == 201
    alice = server.make_user("alice", projects=("default",))
    r = server.submit("x", alice, project="team-a")
    assert r.status_code == 403
    assert "not a member of project 'team-a'" in r.json()["error"]["message"]
    assert server.submit("x", alice, project="default").status_code == 201
    assert server.get("/jobs/default/x")["user"] == "alice"


def test_only_owner_or_admin_may_delete(server: Harness) -> None:
    alice = server.make_user("alice")
    bob = server.make_user("bob")
    server.submit("mine", alice)
    r = server.http.delete("/api/v1/jobs/default/mine", headers=server.h(bob))
    assert r.status_code == 403
    assert server.job("mine")["state"] == "pending"
    r = server.http.delete("/api/v1/jobs/default/mine", headers=server.h(alice))
    assert r.status_code == 200


def test_logs_are_stored_by_offset_without_duplicates(server: Harness) -> None:
    node = server.register("n1", gpus=1)
    server.submit("log", gpus=1)
    server.cycle()
    job_id = server.job("log")["id"]
    url = f"/api/v1/agent/jobs/{job_id}/attempts/1/log"
    put = lambda off, data: server.http.put(  # noqa: E731
        url, params={"offset": off}, content=data, headers=server.h(node)
    ).json()["next_offset"]
    assert put(0, b"hello ") == 6
    assert put(0, b"hello ") == 6  # a resend after a lost answer
    assert put(3, b"lo world\n") == 12  # overlapping chunk: only the new part is kept
    assert put(20, b"gap") == 12  # a gap: the agent is told where to resume
    r = server.http.get("/api/v1/jobs/default/log/logs", headers=server.h(server.admin))
    assert r.text == "hello world\n"
    r = server.http.get(
        "/api/v1/jobs/default/log/logs", params={"offset": 6}, headers=server.h(server.admin)
    )
    assert r.text == "world\n"


def test_logs_readable_only_by_project_members(server: Harness) -> None:
    assert server.post("/projects", {"name": "secret"}).status_code == 201
    server.submit("s", project="secret")
    outsider = server.make_user("eve")
    r = server.http.get("/api/v1/jobs/secret/s/logs", headers=server.h(outsider))
    assert r.status_code == 403
    # ...but everyone sees that the job exists, its state and owner.
    r = server.http.get("/api/v1/jobs", headers=server.h(outsider))
    assert [(j["name"], j["user"]) for j in r.json()["jobs"]] == [("s", "admin")]


def test_a_node_cannot_upload_logs_for_another_nodes_job(server: Harness) -> None:
    server.register("n1", gpus=1)
    n2 = server.register("n2", gpus=0)
    server.submit("j", gpus=1)
    server.cycle()
    job_id = server.job("j")["id"]
    r = server.http.put(
        f"/api/v1/agent/jobs/{job_id}/attempts/1/log",
        params={"offset": 0},
        content=b"forged",
        headers=server.h(n2),
    )
    assert r.status_code == 401


@pytest.mark.parametrize("state", ["running", "pending"])
def test_list_filters_by_state(server: Harness, state: str) -> None:
    node = server.register("n1", gpus=1)
    server.submit("a", gpus=1)
    server.submit("b", gpus=1)
    server.cycle()
    job_id = server.job("a")["id"]
    server.sync(node, [{"job_id": job_id, "attempt": 1, "state": "running", "pid": 1}])
    names = [j["name"] for j in server.get("/jobs", state=state)["jobs"]]
    assert names == (["a"] if state == "running" else ["b"])


# ---------------------------------------------------------------- gang workers' logs


def put_log(server: Harness, node: str, job_id: int, data: bytes, **params: int) -> Any:
    return server.http.put(
        f"/api/v1/agent/jobs/{job_id}/attempts/1/log",
        params={"offset": 0, **params},
        content=data,
        headers=server.h(node),
    )


def read_log(server: Harness, name: str, **params: Any) -> Any:
    return server.http.get(
        f"/api/v1/jobs/default/{name}/logs", params=params, headers=server.h(server.admin)
    )


def gang_on_two_nodes(server: Harness) -> tuple[int, dict[int, str], str]:
    """A gang of two, one worker on each of two nodes; also a node that runs neither.
    Returns the job's id, each rank's node token, and the bystander's token."""
    tokens = {name: server.register(name, gpus=4) for name in ("n1", "n2")}
    bystander = server.register("n3", gpus=0)
    assert server.submit("gang", gpus=4, workers=2).status_code == 201
    server.cycle()
    job = server.job("gang")
    by_rank = {w["rank"]: tokens[w["node"]] for w in job["worker_list"]}
    assert sorted(by_rank) == [0, 1] and by_rank[0] != by_rank[1]
    return job["id"], by_rank, bystander


def test_each_worker_of_a_gang_has_its_own_log(server: Harness) -> None:
    job_id, node_of, _ = gang_on_two_nodes(server)
    assert put_log(server, node_of[0], job_id, b"rank zero\n").json()["next_offset"] == 10
    r = put_log(server, node_of[1], job_id, b"rank one\n", rank=1)
    assert r.status_code == 200 and r.json()["next_offset"] == 9
    assert read_log(server, "gang").text == "rank zero\n"
    assert read_log(server, "gang", rank=0).text == "rank zero\n"
    assert read_log(server, "gang", rank=1).text == "rank one\n"
    # Rank 0 stays where logs always were; rank 1 has a file of its own.
    logs = server.ctx.logs
    assert logs.path(job_id, 1) == logs.root / str(job_id) / "1.log"
    assert logs.path(job_id, 1).read_bytes() == b"rank zero\n"
    assert logs.path(job_id, 1, 1) == logs.root / str(job_id) / "1.r1.log"
    assert logs.path(job_id, 1, 1).read_bytes() == b"rank one\n"


def test_a_workers_log_is_accepted_only_from_the_node_that_runs_it(server: Harness) -> None:
    job_id, node_of, bystander = gang_on_two_nodes(server)
    for token, rank in ((node_of[0], 1), (bystander, 1), (node_of[1], 0), (bystander, 0)):
        r = put_log(server, token, job_id, b"forged\n", rank=rank)
        assert r.status_code == 401, (rank, r.text)
    r = put_log(server, node_of[0], job_id, b"forged\n", rank=1)
    assert r.json()["error"]["message"] == "this node does not run worker 1 of that job attempt"
    assert read_log(server, "gang", rank=0).text == ""
    assert read_log(server, "gang", rank=1).text == ""
    assert put_log(server, node_of[1], job_id, b"mine\n", rank=1).status_code == 200
    assert read_log(server, "gang", rank=1).text == "mine\n"
    # Attempts the job has not had yet are refused for a gang's workers too.
    r = server.http.put(
        f"/api/v1/agent/jobs/{job_id}/attempts/2/log",
        params={"offset": 0, "rank": 1},
        content=b"x",
        headers=server.h(node_of[1]),
    )
    assert r.status_code == 401


def test_a_rank_the_job_does_not_have_is_refused(server: Harness) -> None:
    gang_on_two_nodes(server)
    r = read_log(server, "gang", rank=2)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "rank"
    assert r.json()["error"]["message"] == "rank: job 'gang' has ranks 0..1"
    node = server.register("n4", gpus=1)
    server.submit("single", gpus=1)
    server.cycle()
    r = read_log(server, "single", rank=1)
    assert (r.status_code, r.json()["error"]["field"]) == (422, "rank")
    assert "not a gang" in r.json()["error"]["message"]
    single = server.job("single")
    assert single["node"] == "n4"
    # No worker 1 of a job that is not a gang, whichever node asks.
    assert put_log(server, node, single["id"], b"x", rank=1).status_code == 401


def test_following_a_worker_ends_when_that_worker_ends(server: Harness) -> None:
    job_id, node_of, _ = gang_on_two_nodes(server)
    report = {"job_id": job_id, "attempt": 1}
    for rank in (0, 1):
        server.sync(node_of[rank], [{**report, "rank": rank, "state": "running", "pid": 7}])
    put_log(server, node_of[1], job_id, b"done\n", rank=1)
    server.sync(node_of[1], [{**report, "rank": 1, "state": "exited", "exit_code": 0}])
    assert server.job("gang")["state"] == "running"  # rank 0 still runs
    assert jobs_api._log_finished(server.ctx, job_id, 1, 0) is False
    assert jobs_api._log_finished(server.ctx, job_id, 1, 1) is True
    r = read_log(server, "gang", rank=1, follow="true")  # returns: worker 1 has ended
    assert r.text == "done\n"
