"""Screenshots of the web dashboard on the demo cluster: ``make screenshots``.

Starts the demo cluster the browser tests use (a ``corral server`` and three agents
with simulated GPUs on 127.0.0.1, and the ``corral demo`` workload; see
``tests/browser/demo_cluster.py``), waits until the charts have some history, logs in
as the admin through the /login form in a headless Chromium (``/usr/bin/chromium``,
driven by Playwright, which never downloads a browser), and saves a full-page PNG of
each page to ``docs/screenshots/<page>.png`` at a 1440x900 viewport. A page that
answers 404 (not built yet) is reported and skipped; any other error answer is
reported and makes the exit status 1. Every process started is stopped by PID.

The node and job charts (last hour, 1-second samples) have data after the default
40 s; the overview's "last day" chart reads 1-minute roll-ups, which the server writes
2 to 4 minutes after it starts, so it says "no data for this period yet" unless
``--wait 240``.

    .venv/bin/python scripts/screenshots.py [--wait 40] [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

from browser.demo_cluster import DemoCluster, start_demo  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}
PAGES = (
    ("overview", "/"),
    ("jobs", "/jobs"),
    ("job", "/jobs/team-b/llama-finetune"),
    ("nodes", "/nodes"),
    ("node", "/nodes/demo-node-1"),
    ("projects", "/projects"),
)
# How long a chart may take to fetch its series and draw (or say "no data").
CHART_TIMEOUT_MS = 10_000


def shoot(demo: DemoCluster, out: Path) -> int:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    failures = 0
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            context = browser.new_context(base_url=demo.url, viewport=VIEWPORT)
            page = context.new_page()
            page.goto("/login?next=/")
            page.get_by_label("API token").fill(demo.admin_token)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(f"{demo.url}/")
            for name, path in PAGES:
                response = page.goto(path)
                status = response.status if response is not None else 0
                if status == 404:
                    print(f"  skipped  {path}: 404, not built yet")
                    continue
                if status != 200:
                    print(f"  ERROR    {path}: HTTP {status}")
                    failures += 1
                    continue
                for chart in page.locator(".chart[data-series]").all():
                    try:
                        page.wait_for_function(
                            "el => el.classList.contains('drawn') || el.querySelector('.nodata')",
                            arg=chart.element_handle(),
                            timeout=CHART_TIMEOUT_MS,
                        )
                    except PlaywrightError:
                        print(f"  warning  {path}: a chart did not draw in time")
                page.wait_for_timeout(300)  # let uPlot settle its layout
                target = out / f"{name}.png"
                page.screenshot(path=str(target), full_page=True)
                shown = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target
                print(f"  saved    {path} -> {shown}")
            context.close()
        finally:
            browser.close()
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--wait", type=float, default=40.0, help="seconds to let history build up (default 40)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        print(
            f"!! {CHROMIUM} is missing: cannot take screenshots. Run scripts/test-services.sh "
            "as root (it runs apt-get install chromium).",
            file=sys.stderr,
        )
        return 1
    with tempfile.TemporaryDirectory(prefix="corral-screenshots-") as tmp:
        print("Starting the demo cluster (server, 3 agents with simulated GPUs, 15 jobs) ...")
        demo = start_demo(Path(tmp))
        try:
            print(f"Demo cluster at {demo.url}; waiting {args.wait:g} s for chart history ...")
            time.sleep(args.wait)
            failures = shoot(demo, args.out.resolve())
        finally:
            demo.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
