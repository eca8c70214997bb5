"""Fixtures shared by the whole suite: database back-ends, a Docker engine, a CORRAL_HOME.

* ``database_url`` runs a test once on SQLite and once on PostgreSQL, because
  Corral supports both and they differ (locking, types, transactional DDL).
* ``postgres_server`` is one private PostgreSQL cluster per test session, started
  only when the first test asks for it (sessions that need no PostgreSQL pay
  nothing). Each PostgreSQL test gets its own database on it.
* ``docker_engine`` is one private Docker engine per test session (its own dockerd,
  socket, data and exec roots in a temp dir; no bridge, no iptables), with a busybox
  image imported into it, started only when the first test asks for it
  (``tests/support/docker_engine.py``).
  ``docker_client`` is a client of it, closed after the test.
* ``corral_home`` points ``$CORRAL_HOME`` at a temp dir, so no test reads or writes
  the developer's real state.

When PostgreSQL or Docker is missing, its tests are skipped -- loudly: the reason names
the fix, and the terminal summary prints a warning block with the count. Set
``CORRAL_REQUIRE_POSTGRES=1`` / ``CORRAL_REQUIRE_DOCKER=1`` to make that a failure
instead (for CI machines that are known to have them).

Every process a test starts is stopped by PID in a ``finally`` (see
``tests/support/__init__.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support import cgroup_limits
from support import docker_engine as docker_support
from support.docker_engine import DockerEngine, DockerUnavailable
from support.postgres import (
    REQUIRE_ENV,
    UNAVAILABLE_PREFIX,
    PostgresServer,
    PostgresUnavailable,
    skip_unavailable,
)

if TYPE_CHECKING:
    import docker

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


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """The session's private Docker engine, with the busybox test image (started on first use).

    Yields a started :class:`support.docker_engine.DockerEngine`: ``.base_url``
    (``unix:///tmp/corral-dk-…/docker.sock``), ``.image`` (``corral-test-busybox:latest``:
    busybox, ``/bin/sh``, ``/tmp``, users 1000..1002) and ``.client()`` (a new
    ``docker.DockerClient``). There is no bridge network: run containers with
    ``network_mode="none"`` or ``"host"``. Every container in it is removed at the end of
    the session; a test that wants a clean slate removes its own.

    If the engine is missing here or cannot start, every test that asks for it is skipped
    with the same reason. At the end the engine is stopped by PID, and the session fails
    if any dockerd, containerd, shim or container process of it is still running.
    """
    engine = DockerEngine()
    try:
        engine.start()
    except DockerUnavailable as exc:
        docker_support.skip_unavailable(exc)
    try:
        yield engine
    finally:
        engine.stop()
        leftovers = engine.leftover_processes()
        if leftovers:
            raise RuntimeError(
                "the test Docker engine left processes running after stop(): "
                + "; ".join(leftovers)
            )


@pytest.fixture
def docker_client(docker_engine: DockerEngine) -> Iterator[docker.DockerClient]:
    """A client of the session's Docker engine, closed after the test."""
    client = docker_engine.client()
    try:
        yield client
    finally:
        client.close()


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
    """Mark tests that use ``postgres_server`` directly as ``postgres`` too, and tests
    that use ``docker_engine`` as ``docker``.

    (``database_url``'s PostgreSQL variant is already marked through its param.)
    This keeps ``-m "not postgres"`` / ``-m "not docker"`` accurate ways to run without.
    """
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "postgres_server" in fixtures:
            item.add_marker(pytest.mark.postgres)
        if "docker_engine" in fixtures:
            item.add_marker(pytest.mark.docker)


def _skip_reasons(terminalreporter: pytest.TerminalReporter, prefix: str) -> list[str]:
    """One reason per test that was skipped with a reason containing ``prefix``."""
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
        if prefix in reason:
            reasons.append(reason.removeprefix("Skipped: "))
    return reasons


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print a warning block when PostgreSQL or Docker tests were skipped: never silent."""
    _postgres_summary(terminalreporter)
    _docker_summary(terminalreporter)
    _cgroups_summary(terminalreporter)


def _cgroups_summary(tr: pytest.TerminalReporter) -> None:
    reasons = _skip_reasons(tr, cgroup_limits.UNAVAILABLE_PREFIX)
    if not reasons:
        return
    tr.write_sep("!", f"WARNING: {len(reasons)} cgroup tests were SKIPPED", red=True, bold=True)
    tr.write_line("The process runtime's CPU and memory limits are UNTESTED.", red=True)
    tr.write_line(f"Set {cgroup_limits.REQUIRE_ENV}=1 to make this an error instead.", red=True)
    for reason in sorted(set(reasons))[:3]:
        tr.write_line(f"  reason: {reason}", red=True)
    tr.write_sep("!", red=True, bold=True)


def _docker_summary(tr: pytest.TerminalReporter) -> None:
    reasons = _skip_reasons(tr, docker_support.UNAVAILABLE_PREFIX)
    if not reasons:
        return
    tr.write_sep(
        "!", f"WARNING: {len(reasons)} Docker engine tests were SKIPPED", red=True, bold=True
    )
    tr.write_line("There was no usable Docker engine, so the Docker runtime is UNTESTED.", red=True)
    tr.write_line(f"{docker_support.INSTALL_HINT}, then re-run.", red=True)
    tr.write_line(f"Set {docker_support.REQUIRE_ENV}=1 to make this an error instead.", red=True)
    for reason in sorted(set(reasons))[:3]:
        tr.write_line(f"  reason: {reason}", red=True)
    tr.write_sep("!", red=True, bold=True)


def _postgres_summary(tr: pytest.TerminalReporter) -> None:
    reasons = _skip_reasons(tr, UNAVAILABLE_PREFIX)
    if not reasons:
        return
    tr.write_sep("!", f"WARNING: {len(reasons)} PostgreSQL tests were SKIPPED", red=True, bold=True)
    tr.write_line("PostgreSQL was not available, so the PostgreSQL back-end is UNTESTED.", red=True)
    tr.write_line("Fix: run `scripts/test-services.sh` as root (it installs PostgreSQL),", red=True)
    tr.write_line(f"then re-run. Set {REQUIRE_ENV}=1 to make this an error instead.", red=True)
    for reason in sorted(set(reasons))[:3]:
        tr.write_line(f"  reason: {reason}", red=True)
    tr.write_sep("!", red=True, bold=True)
