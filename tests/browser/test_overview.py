"""The login page and the overview, in a real Chromium, against the demo cluster.

The overview's numbers are compared with what the API says at about the same moment:
the demo's jobs keep starting and ending, so a comparison is only made when two API
reads around the page load agree (a few tries).
"""

from __future__ import annotations

import re
import time
from typing import Any

from playwright.sync_api import Page, expect

from browser.conftest import Watch, login
from browser.demo_cluster import GPUS_TOTAL, NODE_NAMES, DemoCluster

DRAWN = re.compile(r"\bdrawn\b")
CARDS = (
    "nodes-ready",
    "gpus-total",
    "gpus-allocated",
    "gpus-free",
    "gpus-unmanaged",
    "jobs-running",
    "jobs-pending",
)


def test_a_wrong_token_is_refused_with_a_message(page: Page, watch: Watch) -> None:
    page.goto("/")
    # Not logged in: off to the login page, which remembers where we wanted to go.
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    page.get_by_label("API token").fill("crl_not-a-real-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    expect(page.get_by_role("heading", name="Log in to Corral")).to_be_visible()
    context_cookies = page.context.cookies()
    assert not [c for c in context_cookies if c["name"] == "corral_session"]
    # The 401 of the refused login is the only console message the browser may print.
    watch.console_errors = [e for e in watch.console_errors if "401" not in e]
    watch.assert_clean()


def test_the_right_token_lands_on_the_overview(page: Page, demo: DemoCluster) -> None:
    login(page, demo.admin_token)
    expect(page.get_by_role("heading", name="Cluster overview")).to_be_visible()
    expect(page).to_have_title("Overview · Corral")
    session = [c for c in page.context.cookies() if c["name"] == "corral_session"]
    assert session and session[0]["httpOnly"], "the session cookie must be HttpOnly"


def test_a_researcher_logs_in_too(alice_page: Page) -> None:
    expect(alice_page.get_by_role("heading", name="Cluster overview")).to_be_visible()
    expect(alice_page.locator("header .who")).to_contain_text("alice")


def expected_cards(demo: DemoCluster) -> dict[str, int]:
    """The overview's numbers, from the API, computed as services.monitoring.summarize."""
    nodes = demo.api("/nodes")["nodes"]
    now = demo.api("/metrics/now")
    total = allocated = free = unmanaged = 0
    for node in now["nodes"]:
        for gpu in node["gpus"]:
            total += 1
            if gpu["unmanaged"]:
                unmanaged += 1
            elif gpu["jobs"]:
                allocated += 1
            elif node["state"] == "ready":
                free += 1
    return {
        "nodes-ready": sum(n["state"] == "ready" for n in nodes),
        "gpus-total": total,
        "gpus-allocated": allocated,
        "gpus-free": free,
        "gpus-unmanaged": unmanaged,
        "jobs-running": len(demo.api("/jobs", state="running")["jobs"]),
        "jobs-pending": len(demo.api("/jobs", state="pending")["jobs"]),
    }


def shown_cards(page: Page) -> dict[str, int]:
    shown: dict[str, int] = {}
    for testid in CARDS:
        text = page.get_by_test_id(testid).locator("b").inner_text().strip()
        assert text.isdigit(), f"{testid} shows {text!r}, not a count"
        shown[testid] = int(text)
    return shown


def test_the_overview_numbers_match_the_api(admin_page: Page, demo: DemoCluster) -> None:
    tries: list[Any] = []
    for _ in range(6):
        before = expected_cards(demo)
        admin_page.reload()
        shown = shown_cards(admin_page)
        after = expected_cards(demo)
        tries.append((before, shown, after))
        if before == after:
            assert shown == before, f"the overview shows {shown}, the API says {before}"
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the API never held still long enough to compare: {tries}")
    assert shown["gpus-total"] == GPUS_TOTAL
    assert shown["nodes-ready"] == len(NODE_NAMES)
    assert shown["jobs-running"] > 0 and shown["gpus-allocated"] > 0
    utilization = admin_page.get_by_test_id("utilization").locator("b").inner_text().strip()
    assert utilization == "n/a" or utilization.endswith("%"), utilization


def test_the_utilization_chart_draws_offline_without_errors(admin_page: Page, watch: Watch) -> None:
    chart = admin_page.locator(".chart[data-series]").first
    # corral.js fetches the chart's /api/v1/metrics/... series, then either draws it
    # (class "drawn", a uPlot canvas, data-points = how many points) or says why not in
    # a .nodata box. "The last day" of a server that started a minute ago is the raw
    # samples it has (the cluster's row is recorded at start, then every 15 s): drawn.
    admin_page.wait_for_function(
        "el => el.classList.contains('drawn') || el.querySelector('.nodata')",
        arg=chart.element_handle(),
        timeout=15_000,
    )
    assert "could not load" not in chart.inner_text(), chart.inner_text()
    expect(chart).to_have_class(DRAWN)
    expect(chart.locator("canvas").first).to_be_visible()
    assert int(chart.get_attribute("data-points") or "0") > 0
    watch.assert_clean()


def test_the_nodes_panel_shows_one_bar_per_gpu(admin_page: Page) -> None:
    nodes = admin_page.locator(".nodes .node")
    expect(nodes).to_have_count(len(NODE_NAMES))
    expect(admin_page.locator(".nodes .node .gpu")).to_have_count(GPUS_TOTAL)
    for name, count in (("demo-node-1", 8), ("demo-node-2", 8), ("demo-node-3", 4)):
        node = admin_page.locator(f'.nodes .node[title^="{name}:"]')
        expect(node).to_have_attribute("href", f"/nodes/{name}")
        expect(node.locator(".gpu")).to_have_count(count)
    # The demo's jobs hold GPUs, and every GPU says in its tooltip how busy it is.
    expect(admin_page.locator(".nodes .gpu.held").first).to_be_visible()
    first = admin_page.locator(".nodes .gpu").first.get_attribute("title") or ""
    assert first.startswith("GPU 0: "), first
    # The demo's GPUs are simulated, and every node's box says so.
    expect(admin_page.locator(".nodes .node").get_by_test_id("simulated")).to_have_count(
        len(NODE_NAMES)
    )


def test_the_overview_refreshes_itself(admin_page: Page, watch: Watch) -> None:
    # htmx re-fetches /fragments/overview every 5 s without reloading the page.
    with admin_page.expect_response(
        lambda r: r.url.endswith("/fragments/overview"), timeout=8_000
    ) as response:
        pass
    assert response.value.status == 200
    expect(admin_page.get_by_test_id("gpus-total")).to_contain_text(str(GPUS_TOTAL))
    watch.assert_clean()
