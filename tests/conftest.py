"""Fixtures shared by the whole suite: database back-ends and an isolated CORRAL_HOME.

* ``database_url`` runs a test once on SQLite and once on PostgreSQL, because
  Corral supports both and they differ (locking, types, transactional DDL).
* ``postgres_server`` is one private PostgreSQL cluster per test session, started
  only when the first test asks for it (sessions that need no PostgreSQL pay
  nothing). Each PostgreSQL test gets its own database on it.
* ``corral_home`` points ``$CORRAL_HOME`` at a temp dir, so no test reads or writes
  the developer's real state.

When PostgreSQL is missing, its tests are skipped -- loudly: the reason names the
fix, and the terminal summary prints a warning block with the count. Set
``CORRAL_REQUIRE_POSTGRES=1`` to make that a failure instead (for CI machines that
are known to have PostgreSQL).

Every process a test starts is stopped by PID in a ``finally`` (see
``tests/support/__init__.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.postgres import (
    REQUIRE_ENV,
    UNAVAILABLE_PREFIX,
    PostgresServer,
    PostgresUnavailable,
    skip_unavailable,
)

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's private PostgreSQL server (started on first use, stopped at the end).

    Yields a started :class:`support.postgres.PostgresServer`; use ``.url`` for its
    default database or ``.create_database(name)`` for an isolated one. If PostgreSQL
    cannot be found or started, every test that asks for it is skipped with the same
    reason (pytest caches a session fixture's failure, so there is one attempt only).
    """
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as exc:
        skip_unavailable(exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database, once per back-end (ids ``sqlite``/``postgresql``).

    SQLite: a file in the test's ``tmp_path``. PostgreSQL: a fresh database
    ``t_<uuid>`` on the session server, dropped (with FORCE, so a leaked connection
    cannot block it) after the test. ``pytest -m "not postgres"`` runs SQLite only.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/corral.db"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex}"
    url = server.create_database(name)
    try:
        yield url
    finally:
        server.drop_database(name)


@pytest.fixture
def corral_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory set as ``$CORRAL_HOME`` for this test; returns its path."""
    home = tmp_path / "corral-home"
    home.mkdir()
    monkeypatch.setenv("CORRAL_HOME", str(home))
    return home


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that use ``postgres_server`` directly as ``postgres`` too.

    (``database_url``'s PostgreSQL variant is already marked through its param.)
    This keeps ``-m "not postgres"`` an accurate way to run without PostgreSQL.
    """
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def _postgres_skip_reasons(terminalreporter: pytest.TerminalReporter) -> list[str]:
    """One reason per test that was skipped because PostgreSQL was not available."""
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
        if UNAVAILABLE_PREFIX in reason:
            reasons.append(reason.removeprefix("Skipped: "))
    return reasons


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print a warning block when PostgreSQL tests were skipped, so it is never silent."""
    reasons = _postgres_skip_reasons(terminalreporter)
    if not reasons:
        return
    tr = terminalreporter
    tr.write_sep("!", f"WARNING: {len(reasons)} PostgreSQL tests were SKIPPED", red=True, bold=True)
    tr.write_line("PostgreSQL was not available, so the PostgreSQL back-end is UNTESTED.", red=True)
    tr.write_line("Fix: run `scripts/test-services.sh` as root (it installs PostgreSQL),", red=True)
    tr.write_line(f"then re-run. Set {REQUIRE_ENV}=1 to make this an error instead.", red=True)
    for reason in sorted(set(reasons))[:3]:
        tr.write_line(f"  reason: {reason}", red=True)
    tr.write_sep("!", red=True, bold=True)
