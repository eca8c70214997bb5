"""The jobs table and a job's page, in a real Chromium, against the demo cluster.

The demo's jobs move (see README.md): what is asserted is what holds for the first few
minutes of the demo -- llama-finetune runs for 3 minutes, eval-broken fails after ~6 s,
gpt-pretrain waits for a whole node and the ddp-2x2 gang waits for 4 GPUs -- and counts
are compared with the API's with retries.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Page, expect

from browser.conftest import Watch
from browser.demo_cluster import DemoCluster

EPOCH = re.compile(r"epoch (\d+)/60")


def wait_for_api(
    demo: DemoCluster, path: str, ok: Callable[[Any], bool], timeout: float = 20.0
) -> Any:
    """GET ``path`` until ``ok(body)``; the body, or an AssertionError naming the last one."""
    deadline = time.monotonic() + timeout
    body = demo.api(path)
    while not ok(body):
        assert time.monotonic() < deadline, f"{path} never became as expected: {body}"
        time.sleep(0.5)
        body = demo.api(path)
    return body


def newest_epoch(page: Page) -> int:
    found = EPOCH.findall(page.get_by_test_id("job-log").inner_text())
    return int(found[-1]) if found else 0


def test_open_a_job_from_the_table_and_follow_its_log(
    admin_page: Page, demo: DemoCluster, watch: Watch
) -> None:
    admin_page.goto("/jobs")
    admin_page.get_by_test_id("job-name").get_by_role("link", name="llama-finetune").click()
    expect(admin_page).to_have_url(re.compile(r"/jobs/team-b/llama-finetune$"))
    expect(admin_page).to_have_title("llama-finetune (team-b) · Corral")
    detail = demo.api("/jobs/team-b/llama-finetune")
    assert detail["state"] == "running", detail
    expect(admin_page.get_by_test_id("job-title")).to_contain_text("llama-finetune")
    expect(admin_page.get_by_test_id("job-title").get_by_test_id("job-state")).to_have_text(
        "running"
    )
    expect(admin_page.get_by_test_id("field-node")).to_have_text(detail["node"])
    gpu_ids = ",".join(str(i) for i in detail["gpu_ids"])
    expect(admin_page.get_by_test_id("field-gpus")).to_have_text(f"8 ({gpu_ids})")
    expect(admin_page.get_by_test_id("field-user")).to_have_text("bob")
    # Its events: at least its binding and its start, with the node's name.
    events = admin_page.get_by_test_id("event-row")
    expect(events.first).to_be_visible()
    assert detail["node"] in " ".join(events.all_inner_texts())

    # The log opens on the output so far, then grows by itself (a poll every 2 s, a new
    # epoch every 3 s), without reloading the page.
    log = admin_page.get_by_test_id("job-log")
    expect(log).to_contain_text("starting on")
    expect(log).to_contain_text(EPOCH)
    first = newest_epoch(admin_page)
    admin_page.wait_for_function(
        """n => {
            const m = document.querySelector('#job-log').textContent.match(/epoch (\\d+)\\/60/g);
            return m && Number(m[m.length - 1].split(' ')[1].split('/')[0]) > n;
        }""",
        arg=first,
        timeout=12_000,
    )
    assert newest_epoch(admin_page) > first
    assert admin_page.get_by_test_id("log-tail").count() == 1  # still following
    # The log says what the API's log says (the page's text is a suffix of the file's
    # newest part, up to where the page has read).
    text = log.inner_text()
    whole = demo.api_text("/jobs/team-b/llama-finetune/logs")
    assert text.strip().splitlines()[0] in whole
    # Its charts: the agents sample every second, so its GPU utilization has points.
    chart = admin_page.get_by_test_id("chart-utilization")
    expect(chart).to_have_class(re.compile(r"\bdrawn\b"), timeout=15_000)
    assert int(chart.get_attribute("data-points") or "0") > 0
    watch.assert_clean()


def test_a_failed_job_shows_its_exit_code_and_its_error(
    admin_page: Page, demo: DemoCluster, watch: Watch
) -> None:
    wait_for_api(demo, "/jobs/team-b/eval-broken", lambda j: j["state"] == "failed")
    admin_page.goto("/jobs/team-b/eval-broken")
    expect(admin_page.get_by_test_id("job-title").get_by_test_id("job-state")).to_have_text(
        "failed"
    )
    expect(admin_page.get_by_test_id("field-exit-code")).to_have_text("1")
    expect(admin_page.get_by_test_id("field-reason")).to_contain_text("exit")
    log = admin_page.get_by_test_id("job-log")
    expect(log).to_contain_text("FileNotFoundError: [Errno 2]")  # its stderr, too
    expect(admin_page.get_by_test_id("log-end")).to_be_visible()  # no more polling
    assert admin_page.get_by_test_id("log-tail").count() == 0
    watch.assert_clean()


def test_a_gang_lets_you_pick_a_workers_log(admin_page: Page, demo: DemoCluster) -> None:
    admin_page.goto("/jobs/team-a/ddp-2x2")
    expect(admin_page.get_by_test_id("field-gpus")).to_contain_text("2x2")
    ranks = admin_page.get_by_test_id("log-ranks")
    expect(ranks).to_contain_text("worker:")
    expect(ranks.locator("[aria-current]")).to_have_text("0")
    ranks.get_by_role("link", name="1", exact=True).click()
    expect(admin_page).to_have_url(re.compile(r"/jobs/team-a/ddp-2x2\?rank=1#logs$"))
    expect(admin_page.get_by_test_id("log-ranks").locator("[aria-current]")).to_have_text("1")
    detail = demo.api("/jobs/team-a/ddp-2x2")
    if detail["state"] == "running":  # it waits for 4 GPUs; should it run, rank 1 talks
        expect(admin_page.get_by_test_id("job-log")).to_contain_text("starting on")
        expect(admin_page.get_by_test_id("worker-row")).to_have_count(2)


def job_names(page: Page) -> list[str]:
    return page.get_by_test_id("job-name").all_inner_texts()


def api_names(demo: DemoCluster, **params: str) -> list[str]:
    return sorted(j["name"] for j in demo.api("/jobs", **params)["jobs"])


def compare_with_api(page: Page, demo: DemoCluster, **params: str) -> list[str]:
    """The table's job names equal the API's for the same filters (a few tries: jobs
    move between states); returns them."""
    seen: list[Any] = []
    for _ in range(6):
        before = api_names(demo, **params)
        page.reload()
        shown = sorted(job_names(page))
        after = api_names(demo, **params)
        if before == after:
            assert shown == before, f"the table shows {shown}, the API says {before}"
            total = page.get_by_test_id("jobs-total")
            if shown:
                expect(total).to_contain_text(f"of {len(shown)} job")
            return shown
        seen.append((before, shown, after))
        time.sleep(0.5)
    raise AssertionError(f"the API never held still long enough to compare: {seen}")


def query_of(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def test_filter_the_jobs_table(admin_page: Page, demo: DemoCluster, watch: Watch) -> None:
    admin_page.goto("/jobs")
    # Every filter has a label a screen reader (and Playwright) finds it by.
    for label in ("project", "user", "state", "name contains", "show finished (deleted) jobs"):
        expect(admin_page.get_by_label(label, exact=True)).to_be_visible()

    # By state: the pending jobs, each with why it waits.
    admin_page.get_by_label("state", exact=True).select_option("pending")
    admin_page.get_by_role("button", name="Filter").click()
    expect(admin_page).to_have_url(re.compile(r"/jobs\?state=pending$"))
    pending = compare_with_api(admin_page, demo, state="pending")
    assert "gpt-pretrain" in pending
    row = admin_page.locator('[data-testid=job-row][data-job="team-a/gpt-pretrain"]')
    expect(row.get_by_test_id("job-state")).to_have_text("pending")
    expect(row.get_by_test_id("job-reason")).not_to_be_empty()
    expect(row.get_by_test_id("job-node")).to_have_text("-")
    # The form shows the choice, and the reload kept it.
    expect(admin_page.get_by_label("state", exact=True)).to_have_value("pending")

    # By project (a fresh form): team-c is bob's alone.
    admin_page.goto("/jobs")
    admin_page.get_by_label("project", exact=True).select_option("team-c")
    admin_page.get_by_role("button", name="Filter").click()
    expect(admin_page).to_have_url(re.compile(r"/jobs\?project=team-c$"))
    team_c = compare_with_api(admin_page, demo, project="team-c")
    assert {"diffusion-xl", "vit-small", "eval-half-a", "eval-half-b"} <= set(team_c)
    assert set(admin_page.get_by_test_id("job-user").all_inner_texts()) == {"bob"}
    assert set(admin_page.get_by_test_id("job-project").all_inner_texts()) == {"team-c"}

    # Add a user and a name: the filters combine, and the URL carries all of them.
    admin_page.get_by_label("user", exact=True).select_option("alice")
    admin_page.get_by_role("button", name="Filter").click()
    expect(admin_page.get_by_test_id("jobs-total")).to_have_text("No jobs match these filters.")
    assert query_of(admin_page) == {"project": ["team-c"], "user": ["alice"]}
    admin_page.get_by_label("project", exact=True).select_option("")
    admin_page.get_by_label("name contains", exact=True).fill("Sweep")
    admin_page.get_by_label("name contains", exact=True).press("Enter")
    expect(admin_page).to_have_url(re.compile(r"name=Sweep"))
    assert sorted(job_names(admin_page)) == ["sweep-lr-1e-3", "sweep-lr-3e-4"]
    assert set(admin_page.get_by_test_id("job-user").all_inner_texts()) == {"alice"}

    # The live refresh asks for the same filters and keeps the rows.
    with admin_page.expect_response(
        lambda r: "/fragments/jobs?" in r.url, timeout=14_000
    ) as response:
        pass
    assert response.value.status == 200
    assert parse_qs(urlsplit(response.value.url).query) == {
        "user": ["alice"],
        "name": ["Sweep"],
    }
    expect(admin_page.get_by_test_id("job-row")).to_have_count(2)

    # "clear" drops every filter.
    admin_page.get_by_test_id("filter-clear").click()
    expect(admin_page).to_have_url(re.compile(r"/jobs$"))
    assert len(job_names(admin_page)) == len(demo.api("/jobs")["jobs"])
    watch.assert_clean()
