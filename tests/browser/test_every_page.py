"""Every page of the dashboard, offline and clean, and the end of a session.

For each page: no uncaught JavaScript error, no console error, no request off
127.0.0.1 (every script, style and font is Corral's own); every chart ends drawn or
saying "no data for this period yet", never "could not load"; and each part the page
refreshes by itself (its ``hx-get``) answers 200 with the session's cookie.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from browser.conftest import Watch
from browser.demo_cluster import DemoCluster

PAGES = (
    ("/", "Overview · Corral"),
    ("/jobs", "Jobs · Corral"),
    ("/jobs/team-b/llama-finetune", "llama-finetune (team-b) · Corral"),
    ("/nodes", "Nodes · Corral"),
    ("/nodes/demo-node-1", "Node demo-node-1 · Corral"),
    ("/projects", "Projects · Corral"),
    ("/me", "My view · Corral"),
)


@pytest.mark.parametrize(("path", "title"), PAGES, ids=[p for p, _ in PAGES])
def test_every_page_is_clean_offline_and_refreshes(
    admin_page: Page, watch: Watch, path: str, title: str
) -> None:
    response = admin_page.goto(path)
    assert response is not None and response.status == 200
    expect(admin_page).to_have_title(title)
    admin_page.wait_for_load_state("networkidle")
    charts = admin_page.locator(".chart[data-series]")
    for i in range(charts.count()):
        chart = charts.nth(i)
        admin_page.wait_for_function(
            "el => el.classList.contains('drawn') || el.querySelector('.nodata')",
            arg=chart.element_handle(),
            timeout=15_000,
        )
        text = chart.inner_text()
        assert "could not load" not in text, f"{path}: chart {i} says {text!r}"
        if "drawn" not in (chart.get_attribute("class") or ""):
            assert "no data for this period yet" in text, text
    # The parts that refresh themselves answer, with the cookie, as htmx asks for them.
    refreshing = admin_page.locator("[hx-get]")
    urls = {refreshing.nth(i).get_attribute("hx-get") or "" for i in range(refreshing.count())}
    assert urls, f"{path} refreshes nothing by itself"
    for url in sorted(urls):
        answer = admin_page.request.get(url, headers={"HX-Request": "true"})
        assert answer.status == 200, f"{path}: {url} answered {answer.status}"
        assert "<html" not in answer.text(), f"{url} sent a whole page, not a fragment"
    # The active section is marked in the navigation.
    section = "/" + path.split("/")[1] if path != "/" else "/"
    expect(admin_page.locator(f'header nav a[href="{section}"]')).to_have_class(
        re.compile(r"\bactive\b")
    )
    watch.assert_clean()


def test_log_out_ends_the_session(admin_page: Page, demo: DemoCluster) -> None:
    admin_page.get_by_role("button", name="Log out").click()
    expect(admin_page).to_have_url(re.compile(r"/login$"))
    assert not [c for c in admin_page.context.cookies() if c["name"] == "corral_session"]
    admin_page.goto("/jobs")
    expect(admin_page).to_have_url(re.compile(r"/login\?next=/jobs$"))


def test_a_refresh_after_the_session_is_gone_goes_to_the_login_page(
    admin_page: Page, watch: Watch
) -> None:
    expect(admin_page.get_by_role("heading", name="Cluster overview")).to_be_visible()
    admin_page.context.clear_cookies()
    # The overview refreshes every 5 s; without a session htmx is told to load /login.
    admin_page.wait_for_url(re.compile(r"/login$"), timeout=10_000)
    expect(admin_page.get_by_role("heading", name="Log in to Corral")).to_be_visible()
    watch.assert_clean()
