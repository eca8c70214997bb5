"""The nodes table, a node's page (its charts drawn with data) and the projects page, in
a real Chromium against the demo cluster, compared with the API."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Locator, Page, expect

from browser.conftest import Watch
from browser.demo_cluster import NODE_NAMES, DemoCluster

DRAWN = re.compile(r"\bdrawn\b")
TIMES = "\N{MULTIPLICATION SIGN}"  # "8 x NVIDIA A100" in the nodes table


def gpus_text(value: float | None) -> str:
    """A GPU amount as the dashboard writes it (`corral.server.web.core._gpus`)."""
    if value is None:
        return "n/a"
    return f"{value:g}" if value == int(value) else f"{value:.2f}".rstrip("0")


def settled(page: Page, expected: Callable[[], Any], shown: Callable[[], Any], what: str) -> Any:
    """Reload ``page`` until two reads of ``expected`` (the API) around the reload agree;
    then what the page shows must equal them. The demo's jobs move, hence the tries."""
    tries: list[Any] = []
    for _ in range(6):
        before = expected()
        page.reload()
        seen = shown()
        after = expected()
        if before == after:
            assert seen == before, f"{what}: the page shows {seen}, the API says {before}"
            return seen
        tries.append((before, seen, after))
        time.sleep(0.5)
    raise AssertionError(f"{what}: the API never held still long enough: {tries}")


def wait_drawn(chart: Locator) -> int:
    """Wait until corral.js has drawn ``chart`` (or said why not); its number of points."""
    chart.page.wait_for_function(
        "el => el.classList.contains('drawn') || el.querySelector('.nodata')",
        arg=chart.element_handle(),
        timeout=15_000,
    )
    expect(chart).to_have_class(DRAWN)  # with data: never "no data" nor "could not load"
    expect(chart.locator("canvas").first).to_be_visible()
    return int(chart.get_attribute("data-points") or "0")


def test_the_nodes_table_matches_the_api(admin_page: Page, demo: DemoCluster, watch: Watch) -> None:
    admin_page.goto("/nodes")
    expect(admin_page.get_by_test_id("node-row")).to_have_count(len(NODE_NAMES))

    def from_api() -> dict[str, tuple[str, str, str, str]]:
        return {
            n["name"]: (n["state"], n["pool"], str(n["gpus"]), gpus_text(n["gpus_allocated"]))
            for n in demo.api("/nodes")["nodes"]
        }

    def from_page() -> dict[str, tuple[str, str, str, str]]:
        rows: dict[str, tuple[str, str, str, str]] = {}
        for row in admin_page.get_by_test_id("node-row").all():
            cells = row.locator("td")
            rows[row.get_attribute("data-node") or ""] = (
                row.get_by_test_id("node-state").inner_text().strip(),
                cells.nth(2).inner_text().strip(),
                row.get_by_test_id("node-gpus").inner_text().split(TIMES)[0].strip(),
                row.get_by_test_id("node-allocated").inner_text().strip(),
            )
        return rows

    shown = settled(admin_page, from_api, from_page, "nodes")
    assert set(shown) == set(NODE_NAMES)
    assert all(state == "ready" for state, *_ in shown.values())
    # Every demo node's GPUs are simulated, and the table says so on each row.
    expect(admin_page.get_by_test_id("node-row").get_by_test_id("simulated")).to_have_count(
        len(NODE_NAMES)
    )
    expect(admin_page.get_by_test_id("nodes-total")).to_contain_text(f"{len(NODE_NAMES)} nodes")
    admin_page.get_by_test_id("node-link").filter(has_text="demo-node-3").click()
    expect(admin_page).to_have_url(re.compile(r"/nodes/demo-node-3$"))
    expect(admin_page.get_by_role("heading", name=re.compile(r"^Node demo-node-3"))).to_be_visible()
    watch.assert_clean()


def test_a_node_page_shows_its_gpus_jobs_and_charts_with_data(
    admin_page: Page, demo: DemoCluster, watch: Watch
) -> None:
    llama = demo.api("/jobs/team-b/llama-finetune")
    assert llama["state"] == "running" and llama["node"], llama
    node = llama["node"]
    admin_page.goto(f"/nodes/{node}")
    expect(admin_page.get_by_test_id("node-state").first).to_have_text("ready")
    rows = admin_page.get_by_test_id("gpu-row")
    expect(rows).to_have_count(8)
    # Labelled: these numbers come from the simulated back-end, not a GPU.
    expect(rows.get_by_test_id("simulated")).to_have_count(8)
    # The 8-GPU job holds every GPU of its node, and each row names it and its user.
    for index in llama["gpu_ids"]:
        holders = admin_page.locator(f'[data-testid=gpu-row][data-gpu="{index}"]').get_by_test_id(
            "gpu-holders"
        )
        expect(holders).to_contain_text("llama-finetune")
        expect(holders).to_contain_text("bob")
    # Its newest sample: the job declared util:90 (CORRAL_SIM_LOAD).
    expect(rows.first.get_by_test_id("gpu-util")).to_have_text("90%")
    expect(admin_page.get_by_test_id("processes")).to_contain_text("llama-finetune")
    expect(admin_page.get_by_test_id("host-metrics")).to_be_visible()

    # The charts: drawn from the last hour's samples (one per second), one line per GPU.
    util = admin_page.get_by_test_id("chart-gpu-utilization_percent")
    assert wait_drawn(util) > 0
    expect(util.locator(".u-legend .u-series")).to_have_count(1 + 8)  # x + one per GPU
    # Each line is named by its GPU alone: the node and the metric are the chart's.
    labels = util.locator(".u-legend .u-series .u-label").all_inner_texts()
    assert labels[1:] == [f"gpu {i}" for i in range(8)], labels
    assert wait_drawn(admin_page.get_by_test_id("chart-gpu-memory_used_bytes")) > 0
    assert wait_drawn(admin_page.get_by_test_id("chart-host-cpu_percent")) > 0
    # The y axis is as wide as its labels ("100%", "80 GiB"): none is cut off.
    axis = util.locator(".u-axis").nth(1)
    box = axis.bounding_box()
    assert box is not None and box["width"] > 30, box
    watch.assert_clean()


def test_the_projects_page_matches_the_api(
    admin_page: Page, demo: DemoCluster, watch: Watch
) -> None:
    admin_page.goto("/projects")

    def from_api() -> dict[str, tuple[str, str, str, str]]:
        return {
            p["name"]: (
                gpus_text(p["quota"]),
                gpus_text(p["fair_share"]),
                gpus_text(p["gpus_allocated"]),
                str(p["jobs_pending"]),
            )
            for p in demo.api("/projects")["projects"]
        }

    def from_page() -> dict[str, tuple[str, str, str, str]]:
        rows: dict[str, tuple[str, str, str, str]] = {}
        for row in admin_page.get_by_test_id("project-row").all():
            rows[row.get_attribute("data-project") or ""] = tuple(  # type: ignore[assignment]
                row.get_by_test_id(testid).inner_text().strip()
                for testid in (
                    "project-quota",
                    "project-fair-share",
                    "project-allocated",
                    "project-pending",
                )
            )
        return rows

    shown = settled(admin_page, from_api, from_page, "projects")
    assert {"team-a", "team-b", "team-c"} <= set(shown)
    assert [shown[p][0] for p in ("team-a", "team-b", "team-c")] == ["8", "8", "4"]
    # GPUs per project over time: recorded every 15 s from the scheduler's last cycle
    # (the first record with the demo's projects comes up to 15 s after they exist).
    deadline = time.monotonic() + 20
    while not any(s["points"] for s in demo.api("/metrics/projects")["series"]):
        assert time.monotonic() < deadline, "no project history 20 s into the demo"
        time.sleep(1)
    admin_page.reload()
    assert wait_drawn(admin_page.get_by_test_id("projects-chart")) > 0
    # A project's anchor lands on its row (the overview links to /projects#team-a).
    admin_page.goto("/projects#team-c")
    assert admin_page.evaluate("document.querySelector(':target')?.id") == "team-c"
    # The chart's period links work, and say which one is shown.
    admin_page.get_by_test_id("chart-periods").get_by_role("link", name="last week").click()
    expect(admin_page).to_have_url(re.compile(r"/projects\?period=week$"))
    expect(admin_page.get_by_test_id("chart-periods").locator("[aria-current=page]")).to_have_text(
        "last week"
    )
    assert wait_drawn(admin_page.get_by_test_id("projects-chart")) > 0
    watch.assert_clean()
