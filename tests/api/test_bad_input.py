"""Bad input gets one clear error naming the field, and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from api.conftest import Harness

BAD_JOBS: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, body, field named in the error, fragment of the message)
    ("missing-command", {"name": "a"}, "command", "give the program to run"),
    ("empty-command", {"name": "a", "command": []}, "command", "only a container job"),
    ("empty-program", {"name": "a", "command": [""]}, "command", "empty"),
    ("nul-in-command", {"name": "a", "command": ["echo", "a\x00b"]}, "command", "NUL"),
    ("command-not-list", {"name": "a", "command": "rm -rf /"}, "command", "list"),
    ("negative-gpus", {"name": "a", "command": ["x"], "gpus": -1}, "gpus", "greater than"),
    ("absurd-gpus", {"name": "a", "command": ["x"], "gpus": 1_000_000}, "gpus", "less than"),
    ("fraction-over-1", {"name": "a", "command": ["x"], "gpus": 1.5}, "gpus", "fraction below 1"),
    ("tiny-fraction", {"name": "a", "command": ["x"], "gpus": 0.001}, "gpus", "smallest"),
    (
        "fraction-and-memory",
        {"name": "a", "command": ["x"], "gpus": 0.5, "gpu_memory_bytes": 1 << 30},
        "gpu_memory_bytes",
        "only one of",
    ),
    (
        "fraction-gang",
        {"name": "a", "command": ["x"], "gpus": 0.5, "workers": 2},
        "workers",
        "whole GPUs",
    ),
    (
        "mig-gang",
        {"name": "a", "command": ["x"], "mig_profile": "1g.10gb", "workers": 2},
        "workers",
        "whole GPUs",
    ),
    ("zero-workers", {"name": "a", "command": ["x"], "workers": 0}, "workers", "greater than"),
    (
        "gang-over-cluster",
        {"name": "a", "command": ["x"], "gpus": 4, "workers": 3},
        "workers",
        "cluster has 8",
    ),
    (
        "gpu-memory-over-gpu",
        {"name": "a", "command": ["x"], "gpu_memory_bytes": 200 * 1024**3},
        "gpu_memory_bytes",
        "largest GPU has",
    ),
    (
        "bad-mig-profile",
        {"name": "a", "command": ["x"], "mig_profile": "half"},
        "mig_profile",
        "pattern",
    ),
    (
        "mig-profile-nowhere",
        {"name": "a", "command": ["x"], "mig_profile": "1g.10gb"},
        "mig_profile",
        "no GPU is in MIG mode",
    ),
    ("nan-gpus", {"name": "a", "command": ["x"], "gpus": "NaN"}, "gpus", ""),
    ("string-gpus", {"name": "a", "command": ["x"], "gpus": "lots"}, "gpus", "number"),
    (
        "too-many-for-any-node",
        {"name": "a", "command": ["x"], "gpus": 9},
        "gpus",
        "largest node has 8",
    ),
    ("zero-cpus", {"name": "a", "command": ["x"], "cpus": 0}, "cpus", "greater than"),
    ("cpus-over-node", {"name": "a", "command": ["x"], "cpus": 64}, "cpus", "largest node"),
    (
        "memory-over-node",
        {"name": "a", "command": ["x"], "memory_bytes": 1 << 40},
        "memory_bytes",
        "more memory than any node",
    ),
    ("slash-in-name", {"name": "../etc", "command": ["x"]}, "name", "not a valid name"),
    ("path-in-name", {"name": "a/b", "command": ["x"]}, "name", "not a valid name"),
    ("shell-in-name", {"name": "a;rm -rf", "command": ["x"]}, "name", "not a valid name"),
    ("dollar-in-name", {"name": "$(reboot)", "command": ["x"]}, "name", "not a valid name"),
    ("upper-in-name", {"name": "Train", "command": ["x"]}, "name", "not a valid name"),
    ("long-name", {"name": "a" * 64, "command": ["x"]}, "name", "not a valid name"),
    ("empty-name", {"name": "", "command": ["x"]}, "name", "not a valid name"),
    (
        "unknown-project",
        {"name": "a", "project": "nope", "command": ["x"]},
        "project",
        "project 'nope' does not exist",
    ),
    (
        "bad-project-name",
        {"name": "a", "project": "../x", "command": ["x"]},
        "project",
        "not a valid name",
    ),
    ("unknown-field", {"name": "a", "command": ["x"], "gpu": 1}, "gpu", "unknown field"),
    ("bad-kind", {"name": "a", "command": ["x"], "kind": "batch"}, "kind", "train"),
    (
        "reserved-env",
        {"name": "a", "command": ["x"], "env": {"CUDA_VISIBLE_DEVICES": "0"}},
        "env",
        "set by Corral",
    ),
    (
        "corral-env",
        {"name": "a", "command": ["x"], "env": {"CORRAL_JOB_ID": "1"}},
        "env",
        "set by Corral",
    ),
    (
        "bad-env-key",
        {"name": "a", "command": ["x"], "env": {"A B": "1"}},
        "env",
        "not a valid variable name",
    ),
    (
        "relative-workdir",
        {"name": "a", "command": ["x"], "workdir": "tmp"},
        "workdir",
        "absolute path",
    ),
    (
        "negative-grace",
        {"name": "a", "command": ["x"], "grace_seconds": -1},
        "grace_seconds",
        "greater than",
    ),
    (
        "huge-command",
        {"name": "a", "command": ["x"] + ["y" * 1000] * 200},
        "command",
        "longer than",
    ),
]


@pytest.mark.parametrize(
    ("body", "field", "fragment"), [pytest.param(b, f, m, id=i) for i, b, f, m in BAD_JOBS]
)
def test_bad_job_is_refused_with_a_clear_error_and_nothing_changes(
    server: Harness, body: dict[str, Any], field: str, fragment: str
) -> None:
    server.register("n1", gpus=8)
    before = server.count_jobs()
    r = server.post("/jobs", body)
    assert r.status_code in (404, 409, 422), r.text
    error = r.json()["error"]
    assert error["field"] == field
    assert fragment in error["message"]
    assert "\n" not in error["message"]
    assert server.count_jobs() == before


def test_malformed_json_is_refused(server: Harness) -> None:
    r = server.http.post(
        "/api/v1/jobs",
        content=b"{not json",
        headers={**server.h(server.admin), "content-type": "application/json"},
    )
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["error"]["message"]
    assert server.count_jobs() == 0


def test_oversized_request_is_refused_before_it_is_read(server: Harness) -> None:
    body = b'{"name": "a", "command": ["' + b"x" * (2 << 20) + b'"]}'
    r = server.http.post("/api/v1/jobs", content=body, headers=server.h(server.admin))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"
    assert server.count_jobs() == 0


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer crl_wrong"}, id="wrong"),
        pytest.param({"Authorization": "Basic YWRtaW46YWRtaW4="}, id="basic"),
        pytest.param({"Authorization": "Bearer "}, id="empty"),
    ],
)
def test_missing_or_wrong_token_is_refused(server: Harness, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", "/nodes"),
        ("GET", "/whoami"),
        ("POST", "/projects"),
    ]:
        r = server.http.request(
            method, "/api/v1" + path, headers=headers, json={"name": "a", "command": ["x"]}
        )
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
    assert server.count_jobs() == 0


def test_health_needs_no_token(server: Harness) -> None:
    assert server.http.get("/api/v1/health").json()["status"] == "ok"


def test_agent_endpoints_refuse_user_tokens_and_join_tokens(server: Harness) -> None:
    r = server.post("/agent/sync", {"generation_seen": 0})  # admin's user token
    assert r.status_code == 401
    r = server.post("/agent/sync", {"generation_seen": 0}, server.join)
    assert r.status_code == 401


def test_register_refuses_bad_tokens_and_bad_inventories(server: Harness) -> None:
    inv = {"name": "n1", "hostname": "h", "cpu_cores": 4, "memory_bytes": 1 << 30}
    assert server.post("/agent/register", inv, "crj_wrong").status_code == 401
    assert server.post("/agent/register", inv).status_code == 401  # a user token
    bad = {**inv, "name": "../../etc"}
    assert server.post("/agent/register", bad, server.join).status_code == 422
    dup = {
        **inv,
        "gpus": [
            {"index": 0, "uuid": "A", "model": "m", "memory_bytes": 1},
            {"index": 0, "uuid": "B", "model": "m", "memory_bytes": 1},
        ],
    }
    r = server.post("/agent/register", dup, server.join)
    assert r.status_code == 422 and "share an index" in r.json()["error"]["message"]
    assert server.get("/nodes")["nodes"] == []


def test_node_token_cannot_register_another_node(server: Harness) -> None:
    token = server.register("n1")
    inv = {"name": "n2", "hostname": "h", "cpu_cores": 4, "memory_bytes": 1 << 30}
    r = server.post("/agent/register", inv, token)
    assert r.status_code == 403


def test_expired_join_token_is_refused(server: Harness) -> None:
    r = server.post("/join-tokens", {"ttl_seconds": 60})
    token = r.json()["token"]
    server.clock.advance(61)
    inv = {"name": "n1", "hostname": "h", "cpu_cores": 4, "memory_bytes": 1 << 30}
    r = server.post("/agent/register", inv, token)
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def test_non_admins_cannot_manage(server: Harness) -> None:
    alice = server.make_user("alice")
    assert server.post("/users", {"name": "mallory"}, alice).status_code == 403
    assert server.post("/projects", {"name": "p"}, alice).status_code == 403
    assert server.post("/projects/default/members", {"user": "alice"}, alice).status_code == 403
    assert server.post("/join-tokens", {}, alice).status_code == 403
    assert server.post("/users/admin/tokens", {}, alice).status_code == 403
    assert server.post("/users/alice/tokens", {}, alice).status_code == 201


@pytest.mark.parametrize("name", ["UPPER", "a/b", "x" * 64, "-lead", "trail-", "semi;colon"])
def test_bad_user_and_project_names_are_refused(server: Harness, name: str) -> None:
    assert server.post("/users", {"name": name}).status_code == 422
    assert server.post("/projects", {"name": name}).status_code == 422
    assert [p["name"] for p in server.get("/projects")["projects"]] == ["default"]
