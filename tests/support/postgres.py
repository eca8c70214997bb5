"""A private, throw-away PostgreSQL cluster for the test suite.

Why not the system cluster (``pg_ctlcluster 15 main start``)? Because the machines
that run the tests are shared: another user's tests may start, stop or fill that
cluster at any moment, and it listens on the well-known port 5432. Instead every
test session ``initdb``s its own cluster in a temp dir, starts ``postgres`` on a
free port with its Unix socket in that temp dir, and stops exactly that PID at the
end. Durability is switched off (``fsync``, ``synchronous_commit``,
``full_page_writes``): the data is thrown away anyway, and it makes DDL-heavy tests
several times faster.

``initdb`` and ``postgres`` refuse to run as root, so when the tests run as root
(CI, the dev containers) both are run as the ``postgres`` system user; its temp dir
lives directly under ``/tmp`` (which every user can traverse) and is owned by it.

Typical use::

    with PostgresServer() as pg:
        engine = sqlalchemy.create_engine(pg.url)
        other_url = pg.create_database("t_other")

If PostgreSQL is missing or cannot start, :class:`PostgresUnavailable` is raised;
the fixtures in ``tests/conftest.py`` turn it into a loud skip.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn, Self

import psycopg
import pytest
from psycopg import sql

from support.processes import die_with_parent

PG_ROOT = Path("/usr/lib/postgresql")
"""Where Debian installs each major version: ``/usr/lib/postgresql/<major>/bin``."""

BINDIR_ENV = "CORRAL_TEST_PG_BINDIR"
"""Set to a directory holding ``initdb`` and ``postgres`` to use another install."""

SUPERUSER = "postgres"
"""The database superuser of the private cluster (``initdb -U``), trusted, no password."""

DEFAULT_DBNAME = "corral_test"
"""The database that :attr:`PostgresServer.url` points at."""

UNAVAILABLE_PREFIX = "PostgreSQL not available"
"""Every skip for a missing PostgreSQL starts with this, so the summary can count them."""

INSTALL_HINT = "run scripts/test-services.sh as root"

REQUIRE_ENV = "CORRAL_REQUIRE_POSTGRES"
"""Set to 1 to make a missing PostgreSQL fail the tests that need it instead of skipping."""

_BIND_FAILURE = re.compile(r"could not bind|could not create any TCP/IP sockets|already in use")
_LAUNCH_MARK = "--- corral: starting postgres"  # separates attempts in the shared log


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be found or started here; tests that need it should skip."""


def unavailable_reason(exc: BaseException) -> str:
    """The loud, uniform skip reason for tests that cannot get a PostgreSQL server."""
    return f"{UNAVAILABLE_PREFIX}: {exc}; {INSTALL_HINT}"


def postgres_required() -> bool:
    """True when ``$CORRAL_REQUIRE_POSTGRES`` says a missing PostgreSQL is an error."""
    return os.environ.get(REQUIRE_ENV, "").lower() not in ("", "0", "false", "no")


def skip_unavailable(exc: PostgresUnavailable) -> NoReturn:
    """Skip the current test loudly -- or fail it when ``$CORRAL_REQUIRE_POSTGRES`` is set.

    Every test or fixture that starts PostgreSQL itself routes its
    :class:`PostgresUnavailable` through here, so the reason is uniform and the
    terminal summary in ``tests/conftest.py`` can count the skips.
    """
    if postgres_required():
        pytest.fail(f"{unavailable_reason(exc)} ({REQUIRE_ENV} is set)")
    pytest.skip(unavailable_reason(exc))


def _version_key(bindir: Path) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` -> ``(15,)``; ``.../9.6/bin`` -> ``(9, 6)``."""
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)


def find_bindir() -> Path:
    """The newest installed PostgreSQL ``bin`` directory that has ``initdb`` and ``postgres``.

    ``$CORRAL_TEST_PG_BINDIR`` wins when set, for machines that install PostgreSQL
    somewhere other than Debian's ``/usr/lib/postgresql/<major>/bin``.
    """
    override = os.environ.get(BINDIR_ENV)
    candidates = [Path(override)] if override else sorted(PG_ROOT.glob("*/bin"), key=_version_key)
    usable = [d for d in candidates if (d / "initdb").is_file() and (d / "postgres").is_file()]
    if not usable:
        where = override if override else f"{PG_ROOT}/*/bin"
        raise PostgresUnavailable(f"no initdb/postgres found in {where}")
    return usable[-1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it).

    Another process may take it before ``postgres`` binds it; :meth:`PostgresServer.start`
    retries with a new port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _server_user() -> pwd.struct_passwd | None:
    """The account to run ``initdb``/``postgres`` as: ``postgres`` when we are root, else us."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(
            "running as root, initdb refuses to run as root, and there is no "
            f"'{SUPERUSER}' system user to run it as"
        ) from None


_DIE_WITH_PARENT = die_with_parent(signal.SIGINT)
_LIVE: set[PostgresServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Stop servers whose owner forgot :meth:`PostgresServer.stop` (interpreter exit)."""
    for server in list(_LIVE):
        server.stop()


class PostgresServer:
    """One private PostgreSQL cluster: ``initdb`` in a temp dir, ``postgres`` as our child.

    :meth:`start` (or ``with``) brings it up and creates :data:`DEFAULT_DBNAME`;
    :attr:`url` is a SQLAlchemy URL for it; :meth:`create_database` makes more,
    isolated databases on the same server (cheap: ~0.1 s each); :meth:`stop` sends
    SIGINT to the recorded PID, waits, SIGKILLs the process group after the
    deadline, and removes the temp dir. ``stop`` is idempotent and safe to call
    on a half-started server, so it always belongs in a ``finally``.

    ``die_with_parent`` asks the kernel to SIGINT the server when the *thread*
    that started it exits; start it from the main thread (pytest fixtures are),
    or pass ``False`` when starting it from a short-lived thread.
    """

    def __init__(
        self,
        *,
        startup_timeout: float = 60.0,
        stop_timeout: float = 20.0,
        die_with_parent: bool = True,
    ) -> None:
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.die_with_parent = die_with_parent
        self.dbname = DEFAULT_DBNAME
        self.bindir: Path | None = None
        self.tmp_dir: Path | None = None
        self.port: int | None = None
        self.pid: int | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- paths ---------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._require_tmp() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._require_tmp() / "sock"

    @property
    def log_path(self) -> Path:
        return self._require_tmp() / "postgres.log"

    def _require_tmp(self) -> Path:
        if self.tmp_dir is None:
            raise RuntimeError("the PostgreSQL server is not started")
        return self.tmp_dir

    # -- URLs ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """SQLAlchemy URL of :data:`DEFAULT_DBNAME`, e.g. ``postgresql+psycopg://postgres@127.0.0.1:5433/corral_test``."""
        return self.url_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy URL of database ``dbname`` on this server (no password: trust auth)."""
        if self.port is None:
            raise RuntimeError("the PostgreSQL server is not started")
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Self:
        """initdb a fresh cluster, start ``postgres`` on a free port, wait until it serves.

        Raises :class:`PostgresUnavailable` when PostgreSQL is not installed or does not
        come up before ``startup_timeout``; everything started so far is stopped first.
        """
        if self.tmp_dir is not None:
            raise RuntimeError("this PostgresServer was already started; make a new one")
        began = time.monotonic()
        deadline = began + self.startup_timeout
        self.bindir = find_bindir()
        user = _server_user()
        # As root the dir must be reachable by `postgres`: /tmp is world-traversable,
        # whereas $TMPDIR or pytest's tmp_path (mode 0700, root's) may not be.
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="corral-pg-", dir="/tmp" if user else None))
        _LIVE.add(self)
        try:
            self.socket_dir.mkdir(mode=0o700)
            if user is not None:
                for path in (self.tmp_dir, self.socket_dir):
                    os.chown(path, user.pw_uid, user.pw_gid)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._initdb(user, deadline)
            for attempt in range(1, 4):
                self._launch(user)
                if self._wait_ready(deadline, retry_on_bind_failure=attempt < 3):
                    break
            self.create_database(self.dbname)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Fast-shutdown the server (SIGINT to its PID), SIGKILL after the deadline, clean up.

        Idempotent. Only the recorded PID (and, on SIGKILL, its own process group, which
        ``start_new_session`` made private to it) is ever signalled.
        """
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                # SIGINT = "fast shutdown": abort open transactions, disconnect, exit.
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    # The postmaster and its backends share a process group that is
                    # ours alone (start_new_session=True), so this kills nothing else.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=self.stop_timeout)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            if self.tmp_dir is not None:
                shutil.rmtree(self.tmp_dir, ignore_errors=True)
                self.tmp_dir = None
            _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases -----------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create database ``name`` (from ``template1``) and return its SQLAlchemy URL."""
        with self._admin_connection() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting any session a test leaked."""
        with self._admin_connection() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def _admin_connection(self) -> psycopg.Connection[Any]:
        if not self.running or self.port is None:
            raise RuntimeError("the PostgreSQL server is not running")
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        )

    # -- internals -----------------------------------------------------------------

    def _env(self, user: pwd.struct_passwd | None) -> Mapping[str, str]:
        """Our environment minus libpq/PG* settings, in the C locale (stable log text)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if user is not None:
            env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        return env

    def _identity(self, user: pwd.struct_passwd | None) -> dict[str, Any]:
        """``Popen`` arguments that drop root to the ``postgres`` user (and its groups only)."""
        if user is None:
            return {}
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def _initdb(self, user: pwd.struct_passwd | None, deadline: float) -> None:
        assert self.bindir is not None and self._log is not None
        cmd = [
            str(self.bindir / "initdb"),
            "-D", str(self.data_dir),
            "-A", "trust",
            "-U", SUPERUSER,
            "--no-sync",
            "-E", "UTF8",
            "--no-locale",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp_dir,
                env=self._env(user),
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
                **self._identity(user),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PostgresUnavailable(f"could not run initdb: {exc}") from exc
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"initdb failed with exit code {result.returncode}:\n{self._log_tail()}"
            )

    def _launch(self, user: pwd.struct_passwd | None) -> None:
        """Start the postmaster on a fresh free port, recording its PID."""
        assert self.bindir is not None and self._log is not None
        self.port = free_port()
        cmd = [
            str(self.bindir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-k", str(self.socket_dir),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
        ]  # fmt: skip
        self._log.write(f"{_LAUNCH_MARK} on port {self.port}\n".encode())
        self._log.flush()
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp_dir,
                env=self._env(user),
                # Own session: a Ctrl-C in the terminal reaches pytest (which stops us in
                # teardown), not the postmaster; and killpg() can reach its backends.
                start_new_session=True,
                preexec_fn=_DIE_WITH_PARENT if self.die_with_parent else None,
                **self._identity(user),
            )
        except OSError as exc:
            raise PostgresUnavailable(f"could not run postgres: {exc}") from exc
        self.pid = self._proc.pid

    def _wait_ready(self, deadline: float, *, retry_on_bind_failure: bool) -> bool:
        """Poll until the server accepts connections; False means "port taken, try another".

        Readiness is checked through the Unix socket in our private socket dir, so we
        cannot mistake some other server on the same port for ours; the postmaster
        creates that socket only after its TCP listener is bound.
        """
        assert self._proc is not None and self.port is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                tail = self._log_tail()
                this_attempt = tail.rpartition(_LAUNCH_MARK)[2]
                if retry_on_bind_failure and _BIND_FAILURE.search(this_attempt):
                    return False
                raise PostgresUnavailable(f"postgres exited with code {code}:\n{tail}")
            try:
                with psycopg.connect(
                    host=str(self.socket_dir),
                    port=self.port,
                    user=SUPERUSER,
                    dbname="postgres",
                    connect_timeout=2,
                ):
                    return True
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise PostgresUnavailable(
                    f"postgres did not accept connections within {self.startup_timeout:.0f} s:"
                    f"\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _log_tail(self, chars: int = 2000) -> str:
        """The end of initdb's and postgres's output, for error messages."""
        try:
            text = self.log_path.read_bytes()[-chars:].decode(errors="replace")
        except (OSError, RuntimeError):
            return "(no log)"
        return text.strip()

    def __repr__(self) -> str:
        state = f"pid={self.pid} port={self.port}" if self.running else "stopped"
        return f"<PostgresServer {state} tmp_dir={self.tmp_dir}>"
