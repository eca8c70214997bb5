"""`corral project …`, `corral user …` and `corral join-token`."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_fakes import NOW, SERVER, FakeApi, Runner, project, ts


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_project_list_marks_the_current_project(run: Runner, api: FakeApi, logged_in: Path) -> None:
    logged_in.write_text(json.dumps({"server": SERVER, "token": "t", "project": "team-b"}))
    projects = [
        project(
            "team-a",
            ["alice"],
            jobs_running=2,
            jobs_pending=1,
            gpus_allocated=6.0,
            quota=4.0,
            weight=4.0,
            fair_share=8.0,
            limit=10.0,
            priority=1,
        ),
        project("team-b", ["alice", "bob"], gpus_allocated=0.5, quota=2.0, parent="dept"),
        project("empty"),
    ]
    api.on("GET", "/projects", json={"projects": projects})

    result = run("project", "list")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert cells(lines[0]) == ["NAME", "QUOTA", "FAIR-SHARE", "ALLOCATED", "RUNNING", "PENDING",
                               "LIMIT", "PRIORITY", "PARENT", "MEMBERS", "CURRENT"]  # fmt: skip
    assert cells(lines[1]) == ["team-a", "4", "8", "6", "2", "1", "10", "1", "-", "alice"]
    assert cells(lines[2]) == ["team-b", "2", "-", "0.5", "0", "0", "-", "0", "dept",
                               "alice,bob", "*"]  # fmt: skip
    assert cells(lines[3]) == ["empty", "0", "-", "0", "0", "0", "-", "0", "-", "-"]


def test_project_list_yaml(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/projects", json={"projects": [project("team-a")]})

    assert yaml.safe_load(run("project", "list", "-o", "yaml").stdout) == [project("team-a")]


def test_project_create(run: Runner, api: FakeApi) -> None:
    api.on("POST", "/projects", json=project("team-c"), status=201)

    result = run("project", "create", "team-c")

    assert result.exit_code == 0, result.output
    assert api.body("POST", "/projects") == {"name": "team-c"}
    assert result.stdout.startswith("Project team-c created: quota 0, weight 0.\n")


def test_project_create_with_settings(run: Runner, api: FakeApi) -> None:
    created = project(
        "team-c",
        quota=4.0,
        weight=2.0,
        limit=6.0,
        priority=5,
        pools=["a100"],
        interactive_limit_seconds=28800.0,
        parent="dept",
    )
    api.on("POST", "/projects", json=created, status=201)

    result = run(
        "project",
        "create",
        "team-c",
        "--quota",
        "4",
        "--weight",
        "2",
        "--limit",
        "6",
        "--priority",
        "5",
        "--pools",
        "a100",
        "--interactive-limit",
        "8h",
        "--parent",
        "dept",
    )

    assert result.exit_code == 0, result.output
    assert api.body("POST", "/projects") == {
        "name": "team-c",
        "quota": 4.0,
        "weight": 2.0,
        "limit": 6.0,
        "priority": 5,
        "pools": ["a100"],
        "interactive_limit_seconds": 28800.0,
        "parent": "dept",
    }
    assert (
        "quota 4, weight 2, limit 6, priority 5, pools a100, interactive limit 8h, parent dept"
    ) in result.stdout


def test_project_update_sends_only_what_changes(run: Runner, api: FakeApi) -> None:
    api.on("PATCH", "/projects/team-a", json=project("team-a", quota=6.0, weight=6.0))

    result = run("project", "update", "team-a", "--quota", "6", "--no-limit")

    assert result.exit_code == 0, result.output
    assert api.body("PATCH", "/projects/team-a") == {"quota": 6.0, "clear": ["limit"]}
    assert run("project", "update", "team-a").exit_code == 2


def test_project_gpu_memory_policy(run: Runner, api: FakeApi) -> None:
    updated = project("team-a", quota=2.0, weight=2.0, gpu_memory_policy="stop")
    api.on("PATCH", "/projects/team-a", json=updated)

    result = run("project", "update", "team-a", "--gpu-memory-policy", "stop")

    assert result.exit_code == 0, result.output
    assert api.body("PATCH", "/projects/team-a") == {"gpu_memory_policy": "stop", "clear": []}
    assert "quota 2, weight 2, GPU memory over share: stop" in result.stdout
    refused = run("project", "update", "team-a", "--gpu-memory-policy", "kill")
    assert refused.exit_code == 2 and "--gpu-memory-policy" in refused.output


@pytest.mark.parametrize(
    "args",
    [
        ["--quota", "-1"],
        ["--weight", "-2"],
        ["--priority", "5000"],
        ["--interactive-limit", "soon"],
        ["--parent", "A/B"],
    ],
)
def test_project_settings_refused_before_sending(
    run: Runner, api: FakeApi, args: list[str]
) -> None:
    result = run("project", "create", "x", *args)
    assert result.exit_code == 2
    assert args[0] in result.output


def test_project_members(run: Runner, api: FakeApi) -> None:
    api.on("POST", "/projects/team-a/members", json=project("team-a", ["alice", "bob"]))
    api.on("DELETE", "/projects/team-a/members/bob", json=project("team-a", ["alice"]))

    added = run("project", "add-member", "team-a", "bob")
    removed = run("project", "remove-member", "team-a", "bob")

    assert api.body("POST", "/projects/team-a/members") == {"user": "bob"}
    assert added.stdout == "bob is now a member of team-a (alice, bob).\n"
    assert removed.stdout == "bob is no longer a member of team-a.\n"


USER: dict[str, Any] = {
    "name": "carol",
    "role": "admin",
    "unix_user": "cjones",
    "projects": [],
    "created_at": ts(timedelta(hours=1)),
}
TOKEN = {
    "user": "carol",
    "token": "crl_s3cret",
    "description": "first token",
    "created_at": ts(timedelta(0)),
}


def test_user_create_makes_a_token_and_prints_the_login_line(
    run: Runner, api: FakeApi, logged_in: Path
) -> None:
    api.on("POST", "/users", json=USER, status=201)
    api.on("POST", "/users/carol/tokens", json=TOKEN, status=201)

    result = run("user", "create", "carol", "--admin", "--unix-user", "cjones")

    assert result.exit_code == 0, result.output
    assert api.body("POST", "/users") == {"name": "carol", "role": "admin", "unix_user": "cjones"}
    assert result.stdout.count("crl_s3cret") == 2  # alone, and in the login command
    assert f"corral login --server {SERVER} --token crl_s3cret" in result.stdout


def test_user_create_says_what_to_do_when_the_token_fails(run: Runner, api: FakeApi) -> None:
    api.on("POST", "/users", json=USER, status=201)
    api.on(
        "POST", "/users/carol/tokens", status=503,
        json={"error": {"code": "unavailable", "message": "database is busy"}},
    )  # fmt: skip

    result = run("user", "create", "carol")

    assert result.exit_code == 1
    assert "user carol was created, but making their token failed (database is busy)" in (
        result.stderr
    )
    assert "corral user token carol" in result.stderr


def test_user_list(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/users", json={"users": [USER | {"projects": ["team-a", "team-b"]}]})

    result = run("user", "list")

    lines = result.stdout.splitlines()
    assert cells(lines[0]) == ["NAME", "ROLE", "UNIX-USER", "PROJECTS", "CREATED"]
    assert cells(lines[1]) == ["carol", "admin", "cjones", "team-a,team-b", "1h ago"]


def test_user_token(run: Runner, api: FakeApi) -> None:
    api.on("POST", "/users/carol/tokens", json=TOKEN, status=201)

    result = run("user", "token", "carol", "--description", "laptop")

    assert result.exit_code == 0
    assert api.body("POST", "/users/carol/tokens") == {"description": "laptop"}
    assert "crl_s3cret" in result.stdout


def test_join_token_prints_the_agent_command(run: Runner, api: FakeApi, logged_in: Path) -> None:
    api.on(
        "POST",
        "/join-tokens",
        status=201,
        json={
            "token": "join_abc",
            "created_at": NOW.isoformat(),
            "expires_at": (NOW + timedelta(hours=2)).isoformat(),
        },
    )

    result = run("join-token", "--ttl", "2h")

    assert result.exit_code == 0, result.output
    assert api.body("POST", "/join-tokens") == {"ttl_seconds": 7200}
    assert f"corral agent --server {SERVER} --join-token join_abc" in result.stdout
    assert "(in 2h)" in result.stdout
    assert result.stderr == ""  # a routable server address: no loopback note


def test_join_token_defaults_to_a_day_and_warns_about_loopback(run: Runner, api: FakeApi) -> None:
    api.on(
        "POST", "/join-tokens", status=201,
        json={"token": "j", "created_at": NOW.isoformat(), "expires_at": None},
    )  # fmt: skip

    result = run("join-token")

    assert api.body("POST", "/join-tokens") == {"ttl_seconds": 86400}
    assert "expires never" in result.stdout
    assert "only works on this machine" in result.stderr


def test_join_token_refuses_a_zero_ttl(run: Runner, api: FakeApi) -> None:
    result = run("join-token", "--ttl", "0s")

    assert result.exit_code == 2
    assert "'--ttl': must be longer than zero" in result.stderr
