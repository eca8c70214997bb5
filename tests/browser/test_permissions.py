"""What a researcher may see, in a real Chromium: every job's name, state and owner, but
logs only of their own projects' jobs; admin pages refused; their own view.

alice (the demo's researcher) is a member of team-a and team-b; bob's diffusion-xl runs
in team-c, which she is not in.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from browser.conftest import Watch, login
from browser.demo_cluster import DemoCluster


def test_a_researcher_sees_every_job_but_not_every_log(
    alice_page: Page, demo: DemoCluster, watch: Watch
) -> None:
    page = alice_page
    page.goto("/jobs")
    # Every job is listed, bob's too, with its state and owner.
    listed = {
        row.get_attribute("data-job"): (
            row.get_by_test_id("job-user").inner_text(),
            row.get_by_test_id("job-state").inner_text(),
        )
        for row in page.get_by_test_id("job-row").all()
    }
    everyone = {f"{j['project']}/{j['name']}" for j in demo.api("/jobs")["jobs"]}
    assert set(listed) == everyone
    assert listed["team-c/diffusion-xl"][0] == "bob"
    assert listed["team-c/diffusion-xl"][1]

    # Another project's job: its page, fields and events, but no logs and a reason why.
    page.goto("/jobs/team-c/diffusion-xl")
    expect(page.get_by_test_id("job-title")).to_contain_text("diffusion-xl")
    expect(page.get_by_test_id("field-user")).to_have_text("bob")
    expect(page.get_by_test_id("logs-forbidden")).to_have_text(
        "Logs are visible to members of project team-c."
    )
    expect(page.get_by_test_id("job-log")).to_have_count(0)
    page_text = page.locator("main").inner_text()
    bob_log = demo.api_text("/jobs/team-c/diffusion-xl/logs")
    first_line = bob_log.splitlines()[0]  # "starting on <host> with GPUs 0,1,2,3"
    assert first_line.startswith("starting on ") and first_line not in page_text
    assert "epoch 1/50" in bob_log and "epoch 1/50" not in page_text
    # Asking by hand, with her session cookie, is refused the same way.
    tail = page.request.get("/fragments/jobs/team-c/diffusion-xl/log?offset=0&rank=0&attempt=1")
    assert tail.status == 403
    assert "epoch" not in tail.text()
    api = page.request.get("/api/v1/jobs/team-c/diffusion-xl/logs")
    assert api.status == 403, api.text()

    # Her own projects' jobs: the log is there, bob's job in team-b included.
    for job in ("team-b/llama-finetune", "team-a/bert-large"):
        page.goto(f"/jobs/{job}")
        expect(page.get_by_test_id("job-log")).to_contain_text("starting on")
        expect(page.get_by_test_id("logs-forbidden")).to_have_count(0)
    watch.assert_clean()


def test_admin_pages_refuse_a_researcher(alice_page: Page, watch: Watch) -> None:
    response = alice_page.goto("/admin")
    assert response is not None and response.status == 403
    expect(alice_page.get_by_test_id("admin-forbidden")).to_contain_text("for admins only")
    expect(alice_page.get_by_test_id("admin-forbidden")).to_contain_text("alice")
    expect(alice_page.get_by_test_id("admin-link")).to_have_count(0)
    alice_page.goto("/me")
    expect(alice_page.get_by_test_id("admin-link")).to_have_count(0)
    # Her cookie never authorizes a change, not even one she could make with her token.
    changed = alice_page.request.post(
        "/api/v1/jobs",
        data={"name": "by-cookie", "project": "team-a", "command": ["true"]},
    )
    assert changed.status == 401, changed.text()
    # The 403 page and the refused POST are what the console may report.
    watch.console_errors = [e for e in watch.console_errors if "403" not in e and "401" not in e]
    watch.assert_clean()


def test_an_admin_sees_the_admin_page(admin_page: Page) -> None:
    admin_page.goto("/me")
    admin_page.get_by_test_id("admin-link").click()
    expect(admin_page).to_have_url(re.compile(r"/admin$"))
    expect(admin_page.get_by_test_id("admin-forbidden")).to_have_count(0)
    expect(admin_page.locator("main")).to_contain_text("alice")


def test_my_view_shows_my_jobs_and_my_projects(
    alice_page: Page, demo: DemoCluster, watch: Watch
) -> None:
    alice_page.goto("/me")
    mine = {
        f"{j['project']}/{j['name']}"
        for j in demo.api("/jobs", user="alice")["jobs"]
        if j["state"] not in ("succeeded", "failed", "lost", "deleted")
    }
    shown = {row.get_attribute("data-job") for row in alice_page.get_by_test_id("me-job-row").all()}
    assert mine <= shown, f"live jobs of alice missing from /me: {mine - shown}"
    assert {job.split("/")[0] for job in shown} <= {"team-a", "team-b"}
    projects = alice_page.get_by_test_id("me-project-row")
    expect(projects).to_have_count(2)
    assert [p.get_attribute("data-project") for p in projects.all()] == ["team-a", "team-b"]
    expect(alice_page.get_by_test_id("me-free-gpus")).to_contain_text("whole GPUs free")
    watch.assert_clean()


def test_bob_cannot_read_alices_team_a_logs(page: Page, demo: DemoCluster) -> None:
    login(page, demo.tokens["bob"])
    page.goto("/jobs/team-a/resnet50-baseline")
    expect(page.get_by_test_id("logs-forbidden")).to_contain_text("team-a")
    page.goto("/jobs/team-c/diffusion-xl")
    expect(page.get_by_test_id("job-log")).to_contain_text("starting on")
