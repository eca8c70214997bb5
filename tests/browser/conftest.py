"""Browser tests: the web dashboard in a real headless Chromium, driven by Playwright.

* ``demo`` (one per session): a real ``corral server`` and three simulated agents on
  127.0.0.1 with the ``corral demo`` workload (`demo_cluster.start_demo`); every
  process is stopped by PID at the end.
* ``browser`` (one per session): Debian's Chromium (``/usr/bin/chromium``, installed by
  ``scripts/test-services.sh``) launched headless through the Playwright package of
  the dev extras. Playwright never downloads a browser here.
* ``page``: a fresh browser context (1440x900, no cookies) and page, whose console
  errors, uncaught exceptions and requests are recorded in ``watch`` (`Watch`);
  ``admin_page`` is the same page logged in through the /login form with the admin
  token; ``login(page, demo.tokens["alice"])`` logs in as the demo researcher alice.

When Chromium (or the Playwright package) is missing, every browser test is skipped,
loudly: the reason names the fix, and the terminal summary repeats it. Set
``CORRAL_REQUIRE_CHROMIUM=1`` to make that a failure instead (for machines known to
have it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from browser.demo_cluster import DemoCluster, start_demo

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request, ViewportSize

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_ENV = "CORRAL_REQUIRE_CHROMIUM"
SKIP_PREFIX = "Chromium is NOT available"
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}
ALLOWED_HOSTS = {"127.0.0.1"}

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


def chromium_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not os.access(CHROMIUM, os.X_OK):
        return (
            f"{SKIP_PREFIX}: no {CHROMIUM}, so the web dashboard is UNTESTED in a real "
            "browser. Fix: run scripts/test-services.sh as root (it runs apt-get install "
            "chromium)."
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return (
            f"{SKIP_PREFIX}: the Python package `playwright` is not installed, so the web "
            "dashboard is UNTESTED in a real browser. Fix: pip install -e '.[dev]' "
            "(make test does)."
        )
    return None


def require_chromium() -> None:
    """Skip the current test loudly, or fail it when $CORRAL_REQUIRE_CHROMIUM=1."""
    reason = chromium_unavailable()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A warning block when browser tests were skipped for want of Chromium."""
    skipped = 0
    reason = ""
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        text = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
        if SKIP_PREFIX in text:
            skipped += 1
            reason = text.removeprefix("Skipped: ")
    if not skipped:
        return
    tr = terminalreporter
    tr.write_sep("!", f"WARNING: {skipped} browser tests were SKIPPED", red=True, bold=True)
    tr.write_line(f"  reason: {reason}", red=True)
    tr.write_line(f"Set {REQUIRE_ENV}=1 to make this an error instead.", red=True)
    tr.write_sep("!", red=True, bold=True)


# ---------------------------------------------------------------- the cluster


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoCluster]:
    """The demo cluster (server, 3 agents, the workload), shared by all browser tests."""
    require_chromium()  # no point starting a cluster nobody can look at
    cluster = start_demo(tmp_path_factory.mktemp("browser-demo"))
    try:
        yield cluster
    finally:
        cluster.stop()


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Watch:
    """What a page did that a test may want to forbid."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        url = str(message.location.get("url", ""))
        if urlsplit(url).path == "/favicon.ico":
            # Chromium asks every site for /favicon.ico by itself; its 404 is no page's error.
            return
        self.console_errors.append(f"{message.text} ({url or message.location})")

    def on_page_error(self, error: Any) -> None:
        self.page_errors.append(str(error))

    def on_request(self, request: Request) -> None:
        self.requests.append(request.url)

    def foreign_requests(self) -> list[str]:
        """Requests to any host but 127.0.0.1 (the dashboard must work offline)."""
        return [
            url
            for url in self.requests
            if urlsplit(url).scheme not in ("data", "blob", "about")
            and urlsplit(url).hostname not in ALLOWED_HOSTS
        ]

    def assert_clean(self) -> None:
        assert not self.page_errors, f"uncaught JavaScript errors: {self.page_errors}"
        assert not self.console_errors, f"console errors: {self.console_errors}"
        assert not self.foreign_requests(), f"requests off 127.0.0.1: {self.foreign_requests()}"


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def page(browser: Browser, demo: DemoCluster, watch: Watch) -> Iterator[Page]:
    """A fresh, logged-out page on the demo server (relative URLs work in goto)."""
    context = browser.new_context(base_url=demo.url, viewport=VIEWPORT)
    context.set_default_timeout(10_000)
    try:
        p = context.new_page()
        p.on("console", watch.on_console)
        p.on("pageerror", watch.on_page_error)
        p.on("request", watch.on_request)
        yield p
    finally:
        context.close()


def login(page: Page, token: str, next_path: str = "/") -> None:
    """Log in through the /login form, as a person would, and wait for ``next_path``."""
    page.goto(f"/login?next={next_path}")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == next_path)


@pytest.fixture
def admin_page(page: Page, demo: DemoCluster) -> Page:
    """``page``, logged in with the admin token, on the overview."""
    login(page, demo.admin_token)
    return page


@pytest.fixture
def alice_page(page: Page, demo: DemoCluster) -> Page:
    """``page``, logged in as the demo researcher alice (team-a, team-b), on the overview."""
    login(page, demo.tokens["alice"])
    return page
