"""Project settings: creation, updates, and refusals that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from api.conftest import Harness


def test_create_with_settings_and_read_them_back(server: Harness) -> None:
    assert server.post("/projects", {"name": "dept", "quota": 8}).status_code == 201
    r = server.post(
        "/projects",
        {
            "name": "team-a",
            "quota": 4,
            "weight": 2,
            "limit": 6,
            "priority": 10,
            "pools": ["default"],
            "interactive_limit_seconds": 28800,
            "parent": "dept",
        },
    )
    assert r.status_code == 201, r.text
    got = server.get("/projects/team-a")
    assert (got["quota"], got["weight"], got["limit"], got["priority"]) == (4, 2, 6, 10)
    assert got["pools"] == ["default"] and got["parent"] == "dept"
    assert got["interactive_limit_seconds"] == 28800


def test_weight_defaults_to_the_quota(server: Harness) -> None:
    server.post("/projects", {"name": "p", "quota": 3})
    assert server.get("/projects/p")["weight"] == 3


def test_update_changes_only_what_is_given_and_clears_on_request(server: Harness) -> None:
    server.post("/projects", {"name": "p", "quota": 2, "limit": 4, "priority": 1})
    r = server.http.patch(
        "/api/v1/projects/p", headers=server.h(server.admin), json={"quota": 3, "clear": ["limit"]}
    )
    assert r.status_code == 200, r.text
    got = server.get("/projects/p")
    assert (got["quota"], got["limit"], got["priority"]) == (3, None, 1)


BAD_SETTINGS: list[tuple[str, dict[str, Any], str, str]] = [
    ("negative-quota", {"quota": -1}, "quota", "greater than or equal to 0"),
    ("negative-weight", {"weight": -0.5}, "weight", "greater than or equal to 0"),
    ("negative-limit", {"limit": -2}, "limit", "greater than or equal to 0"),
    ("absurd-priority", {"priority": 10**6}, "priority", "less than or equal to 1000"),
    ("unknown-parent", {"parent": "nope"}, "parent", "unknown project 'nope'"),
    ("unknown-pool", {"pools": ["gpu-x"]}, "pools", "unknown pool 'gpu-x'"),
    ("bad-pool-name", {"pools": ["A/B"]}, "pools.0", "not a valid name"),
    (
        "zero-interactive-limit",
        {"interactive_limit_seconds": 0},
        "interactive_limit_seconds",
        "greater than 0",
    ),
    ("string-quota", {"quota": "four"}, "quota", "number"),
    ("unknown-field", {"quotas": 4}, "quotas", "unknown field"),
]


@pytest.mark.parametrize(
    ("body", "field", "fragment"), [pytest.param(b, f, m, id=i) for i, b, f, m in BAD_SETTINGS]
)
def test_bad_settings_are_refused_naming_the_field(
    server: Harness, body: dict[str, Any], field: str, fragment: str
) -> None:
    r = server.post("/projects", {"name": "p", **body})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert fragment in r.json()["error"]["message"]
    assert [p["name"] for p in server.get("/projects")["projects"]] == ["default"]


def test_parent_cycles_are_refused(server: Harness) -> None:
    server.post("/projects", {"name": "a", "quota": 0})
    server.post("/projects", {"name": "b", "quota": 0, "parent": "a"})
    r = server.http.patch(
        "/api/v1/projects/a", headers=server.h(server.admin), json={"parent": "b"}
    )
    assert r.status_code == 422
    assert r.json()["error"] == {
        "code": "invalid",
        "field": "parent",
        "message": "parent: parent cycle a → b → a",
    }
    assert server.get("/projects/a")["parent"] is None
    r = server.http.patch(
        "/api/v1/projects/a", headers=server.h(server.admin), json={"parent": "a"}
    )
    assert r.status_code == 422 and "cycle a → a" in r.json()["error"]["message"]


def test_children_cannot_hold_more_quota_than_their_department(server: Harness) -> None:
    server.post("/projects", {"name": "dept", "quota": 4})
    assert server.post("/projects", {"name": "a", "quota": 3, "parent": "dept"}).status_code == 201
    r = server.post("/projects", {"name": "b", "quota": 2, "parent": "dept"})
    assert r.status_code == 422
    assert "have 5 GPUs of quota together, more than its 4" in r.json()["error"]["message"]
    assert "b" not in [p["name"] for p in server.get("/projects")["projects"]]


def test_pools_become_known_when_a_node_joins_with_them(server: Harness) -> None:
    assert server.post("/projects", {"name": "p", "pools": ["a100"]}).status_code == 422
    server.register("n1", pool="a100")
    assert server.post("/projects", {"name": "p", "pools": ["a100"]}).status_code == 201
    assert server.get("/nodes/n1")["pool"] == "a100"


def test_job_pool_must_exist_and_be_allowed_for_its_project(server: Harness) -> None:
    server.register("n1", pool="a100")
    server.register("n2", pool="h100")
    server.post("/projects", {"name": "p", "pools": ["a100"]})
    r = server.submit("j", project="p", pool="nowhere")
    assert r.status_code == 422 and "unknown pool 'nowhere'" in r.json()["error"]["message"]
    r = server.submit("j", project="p", pool="h100")
    assert r.status_code == 422 and "may only use pools a100" in r.json()["error"]["message"]
    assert server.submit("j", project="p", pool="a100").status_code == 201


def test_non_admins_cannot_change_settings(server: Harness) -> None:
    alice = server.make_user("alice")
    r = server.http.patch("/api/v1/projects/default", headers=server.h(alice), json={"quota": 100})
    assert r.status_code == 403
    assert server.get("/projects/default")["quota"] == 0
