"""My view (a researcher's jobs, projects and the free GPUs) and the admin page."""

from __future__ import annotations

import re
from typing import Any

import pytest

from api.conftest import Harness
from corral.server.web.pages import me as me_page

GiB = 1024**3


def login(server: Harness, token: str) -> None:
    r = server.http.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text


def card(html: str, testid: str) -> str:
    m = re.search(rf'data-testid="{testid}"[^>]*><b>([^<]*)</b>', html)
    assert m, f"no {testid} card"
    return m.group(1)


def rows(html: str, testid: str, attr: str) -> list[str]:
    return re.findall(rf'data-testid="{testid}" {attr}="([^"]*)"', html)


def push_sample(server: Harness, node_token: str, gpus: list[dict[str, Any]]) -> None:
    body = {"samples": [{"at": server.clock.now().isoformat(), "gpus": gpus, "host": {}}]}
    r = server.post("/agent/metrics", body, node_token)
    assert r.status_code == 204, r.text


def gpu(index: int, node: str, processes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-{node}-{index}",
        "utilization_percent": 30.0,
        "memory_used_bytes": 10 * GiB,
        "memory_total_bytes": 80 * GiB,
        "processes": processes or [],
    }


def two_teams(server: Harness) -> tuple[str, str]:
    for name, quota in (("team-a", 2), ("team-b", 2)):
        assert server.post("/projects", {"name": name, "quota": quota}).status_code == 201
    return (
        server.make_user("alice", projects=("team-a",)),
        server.make_user("bob", projects=("team-b",)),
    )


def test_my_view_shows_only_my_jobs_and_my_projects(server: Harness) -> None:
    server.register("n1", gpus=4)
    alice, bob = two_teams(server)
    assert server.submit("a-train", alice, project="team-a", gpus=1).status_code == 201
    assert server.submit("a-big", alice, project="team-a", gpus=8).status_code == 422  # too big
    assert server.submit("a-wait", alice, project="team-a", gpus=4).status_code == 201
    assert server.submit("b-train", bob, project="team-b", gpus=1).status_code == 201
    server.cycle()

    login(server, alice)
    r = server.http.get("/me")
    assert r.status_code == 200
    html = r.text
    assert rows(html, "me-job-row", "data-job") == ["team-a/a-train", "team-a/a-wait"]
    assert "b-train" not in html
    assert 'href="/jobs/team-a/a-train"' in html
    # GPUs as the jobs table and `corral list` write them: asked, then which it got.
    gpus = re.findall(r'data-testid="me-job-gpus">([^<]*)<', html)
    assert re.fullmatch(r"1 \(\d\)", gpus[0]) and gpus[1] == "4", gpus
    assert rows(html, "me-project-row", "data-project") == ["team-a"]
    assert "team-b" not in html
    assert 'data-testid="admin-link"' not in html  # alice is no admin
    # The chart of my GPUs asks the API for my series only.
    assert "/api/v1/metrics/users?user=alice&amp;metric=allocated_gpus" in html

    # The jobs part refreshes by itself, as a fragment.
    assert 'hx-get="/fragments/me/jobs"' in html and 'hx-trigger="every 10s"' in html
    fragment = server.http.get("/fragments/me/jobs", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert rows(fragment.text, "me-job-row", "data-job") == ["team-a/a-train", "team-a/a-wait"]

    login(server, bob)
    html = server.http.get("/me").text
    assert rows(html, "me-job-row", "data-job") == ["team-b/b-train"]
    assert rows(html, "me-project-row", "data-project") == ["team-b"]


def test_my_projects_show_the_schedulers_numbers_or_na(server: Harness) -> None:
    server.register("n1", gpus=4)
    alice, _ = two_teams(server)
    login(server, alice)
    html = server.http.get("/me").text
    row = html.split('data-project="team-a"')[1].split("</tr>")[0]
    assert row.count("n/a") == 3  # no cycle yet: fair share, allocated, pending unknown

    server.submit("one", alice, project="team-a", gpus=1)
    server.submit("two", alice, project="team-a", gpus=1)
    server.cycle()
    html = server.http.get("/me").text
    row = html.split('data-project="team-a"')[1].split("</tr>")[0]
    assert "n/a" not in row
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)
    quota, _fair, allocated, pending, mine = cells
    assert (quota, allocated, pending, mine) == ("2", "2", "0", "2")


def test_my_view_counts_the_free_gpus(server: Harness) -> None:
    n1 = server.register("n1", gpus=4)
    n2 = server.register("n2", gpus=2)
    alice, _ = two_teams(server)
    stranger = {"pid": 4242, "used_memory_bytes": GiB, "owner": "user", "user": "mallory",
                "command": "python"}  # fmt: skip
    push_sample(server, n2, [gpu(0, "n2", [stranger]), gpu(1, "n2")])
    push_sample(server, n1, [gpu(i, "n1") for i in range(4)])
    assert server.submit("one", alice, project="team-a", gpus=1).status_code == 201
    assert server.submit("two", alice, project="team-a", gpus=1).status_code == 201
    assert server.submit("half", alice, project="team-a", gpus=0.5).status_code == 201
    server.cycle()
    assert {server.job(n, "team-a")["state"] for n in ("one", "two", "half")} == {"bound"}

    login(server, alice)
    html = server.http.get("/me").text
    # 6 GPUs: 2 held whole, 1 shared by the half job, 1 used by mallory outside Corral.
    assert card(html, "me-free-gpus") == "2"
    assert card(html, "me-free-model") == "2"
    assert 'data-model="A100-80GB"' in html
    free_row = r'data-testid="me-free-row" data-node="([^"]*)" data-model="[^"]*" data-free="(\d+)"'
    free_by_node = dict(re.findall(free_row, html))
    assert sum(map(int, free_by_node.values())) == 2
    assert "SIMULATED" in html
    # The shared GPU with room is listed: half of 80 GiB left.
    [shared] = re.findall(r'data-testid="me-shared-room"[^>]*>([^<]*)</li>', html)
    assert "40GiB of 80GiB free" in shared and "1 job sharing it" in shared
    fragment = server.http.get("/fragments/me/free", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and card(fragment.text, "me-free-gpus") == "2"


def test_free_gpus_leave_out_nodes_that_are_not_ready(server: Harness) -> None:
    server.register("n1", gpus=2)
    alice, _ = two_teams(server)
    server.clock.advance(120)  # no heartbeat: n1 goes down
    server.check_health()
    login(server, alice)
    html = server.http.get("/me").text
    assert card(html, "me-free-gpus") == "0"
    assert 'data-testid="me-free-skipped"' in html and "n1 (" in html


def test_the_admin_page_is_for_admins(server: Harness) -> None:
    server.register("n1", gpus=2)
    alice, _ = two_teams(server)
    r = server.post("/join-tokens", {})
    assert r.status_code == 201
    join_secret = r.json()["token"]

    login(server, server.admin)
    me = server.http.get("/me").text
    assert 'data-testid="admin-link"' in me and 'href="/admin"' in me
    r = server.http.get("/admin")
    assert r.status_code == 200
    html = r.text
    users = rows(html, "admin-user-row", "data-user")
    assert {"alice", "bob"} <= set(users)
    alice_row = html.split('data-user="alice"')[1].split("</tr>")[0]
    assert "team-a" in alice_row and re.search(r'<td class="num">1</td>', alice_row)
    team_a = html.split('data-project="team-a"')[1].split("</tr>")[0]
    assert "alice" in team_a and "bob" not in team_a
    assert len(rows(html, "admin-join-token-row", "data-expired")) == 2  # bootstrap's + ours
    assert card(html, "admin-nodes-total") == "1"
    # No secret ever: neither the admin's token, nor a user's, nor a join token.
    for secret in (server.admin, alice, server.join, join_secret):
        assert secret not in html

    login(server, alice)
    r = server.http.get("/admin", follow_redirects=False)
    assert r.status_code == 403
    assert 'data-testid="admin-forbidden"' in r.text
    assert "for admins only" in r.text and "alice" in r.text
    assert "team-b" not in r.text and "bob" not in r.text


def test_the_admin_page_needs_a_login(server: Harness) -> None:
    r = server.http.get("/admin", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/admin"
    r = server.http.get("/me", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/me"


def test_my_view_shows_a_page_of_live_jobs_and_links_to_the_rest(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(me_page, "LIVE_LIMIT", 2)
    server.register("n1", gpus=1)
    alice, _ = two_teams(server)
    for name in ("j1", "j2", "j3"):
        assert server.submit(name, alice, project="team-a", gpus=1).status_code == 201
    server.cycle()  # j1 holds the only GPU; j2 and j3 wait
    login(server, alice)
    html = server.http.get("/me").text
    assert rows(html, "me-job-row", "data-job") == ["team-a/j1", "team-a/j3"]
    assert 'data-testid="me-jobs-more"' in html and "Showing 2 of 3 live" in html
    assert 'href="/jobs?user=alice"' in html
