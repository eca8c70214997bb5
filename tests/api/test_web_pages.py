"""The dashboard's server side: login, the session cookie, pages, permissions.

(The pages in a real browser are tested in tests/browser.)
"""

from __future__ import annotations

import re

from api.conftest import Harness


def login(server: Harness, token: str) -> None:
    r = server.http.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text


def card(html: str, testid: str) -> str:
    m = re.search(rf'data-testid="{testid}"><b>([^<]*)</b>', html)
    assert m, f"no {testid} card"
    return m.group(1)


def test_pages_need_a_login_and_a_bad_token_is_refused(server: Harness) -> None:
    r = server.http.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
    r = server.http.post("/login", data={"token": "crl_nope", "next": "/"})
    assert r.status_code == 401 and "not valid" in r.text
    assert "corral_session" not in r.headers.get("set-cookie", "")


def test_login_never_redirects_off_site(server: Harness) -> None:
    r = server.http.post(
        "/login",
        data={"token": server.admin, "next": "//evil.example/x"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/"


def test_the_overview_shows_the_clusters_numbers(server: Harness) -> None:
    server.register("n1", gpus=4)
    server.post("/projects", {"name": "team-a", "quota": 2})
    server.submit("a", gpus=2, project="team-a")
    server.submit("b", gpus=3, project="team-a")  # waits: 2 of the 4 GPUs are taken
    server.cycle()
    login(server, server.admin)
    html = server.http.get("/").text
    assert card(html, "nodes-ready") == "1"
    assert card(html, "gpus-total") == "4"
    assert card(html, "gpus-allocated") == "2"
    assert card(html, "gpus-free") == "2"
    assert card(html, "jobs-pending") == "1"
    assert ">team-a</a>" in html
    # "default" has no quota, no GPUs and nothing waiting: counted, not drawn.
    assert ">default</a>" not in html
    assert 'data-testid="idle-projects">· 1 project without quota' in html
    fragment = server.http.get("/fragments/overview", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert card(fragment.text, "gpus-total") == "4"


def test_the_session_cookie_reads_the_api_but_never_writes(server: Harness) -> None:
    login(server, server.admin)
    assert server.http.get("/api/v1/jobs").status_code == 200
    r = server.http.post("/api/v1/jobs", json={"name": "x", "command": ["true"]})
    assert r.status_code == 401


def test_logout_ends_the_session(server: Harness) -> None:
    login(server, server.admin)
    assert server.http.get("/", follow_redirects=False).status_code == 200
    server.http.post("/logout", follow_redirects=False)
    assert server.http.get("/", follow_redirects=False).status_code == 303


def test_static_files_are_served_by_corral_itself(server: Harness) -> None:
    for path in (
        "/static/vendor/htmx.min.js",
        "/static/vendor/uPlot.iife.min.js",
        "/static/corral.css",
    ):
        assert server.http.get(path).status_code == 200, path
    login(server, server.admin)
    html = server.http.get("/").text
    assert not re.search(r'(src|href)="https?://', html), "every asset must be served locally"
