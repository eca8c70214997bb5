"""The test suite's own PostgreSQL and database fixtures work, and leave nothing behind.

If these fail, every PostgreSQL-backed test is suspect, so they are kept small and
direct: a real server, real SQL, and a check that stopping really stops the process.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import sqlalchemy as sa

from support.postgres import PostgresServer, PostgresUnavailable, skip_unavailable


def _scalar(url: str, query: str) -> object:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(query)).scalar()
    finally:
        engine.dispose()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but owned by another user
        return True
    return True


def test_server_answers_version(postgres_server: PostgresServer) -> None:
    version = _scalar(postgres_server.url, "select version()")
    assert isinstance(version, str)
    assert version.startswith("PostgreSQL ")
    assert postgres_server.url.startswith("postgresql+psycopg://postgres@127.0.0.1:")


def test_created_databases_are_isolated(postgres_server: PostgresServer) -> None:
    url_a = postgres_server.create_database("t_isolation_a")
    url_b = postgres_server.create_database("t_isolation_b")
    engine_a = sa.create_engine(url_a)
    try:
        assert url_a != url_b
        with engine_a.begin() as conn:
            conn.execute(sa.text("create table only_in_a (x int)"))
            conn.execute(sa.text("insert into only_in_a values (42)"))
        assert _scalar(url_a, "select x from only_in_a") == 42
        assert _scalar(url_b, "select to_regclass('only_in_a') is null") is True
        assert _scalar(url_b, "select current_database()") == "t_isolation_b"
    finally:
        engine_a.dispose()
        postgres_server.drop_database("t_isolation_a")
        postgres_server.drop_database("t_isolation_b")
    assert (
        _scalar(
            postgres_server.url,
            "select count(*) from pg_database where datname like 't_isolation_%'",
        )
        == 0
    )


def test_database_url_is_empty_and_writable(database_url: str) -> None:
    """Runs twice (sqlite, postgresql): each variant gets a working, empty database."""
    engine = sa.create_engine(database_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        with engine.begin() as conn:
            conn.execute(sa.text("create table t (x int)"))
            conn.execute(sa.text("insert into t values (1), (2)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("select sum(x) from t")).scalar() == 3
    finally:
        engine.dispose()


def test_corral_home_is_private(corral_home: Path) -> None:
    assert corral_home.is_dir()
    assert os.environ["CORRAL_HOME"] == str(corral_home)
    assert list(corral_home.iterdir()) == []


@pytest.mark.postgres
def test_stop_ends_the_process_and_removes_the_temp_dir() -> None:
    # A separate server, so stopping it cannot disturb the session's shared one.
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as exc:
        skip_unavailable(exc)
    try:
        pid, port, tmp_dir = server.pid, server.port, server.tmp_dir
        assert pid is not None and port is not None and tmp_dir is not None
        assert server.running and _pid_exists(pid)
        assert _scalar(server.url, "select pg_postmaster_start_time() is not null") is True
        assert _scalar(server.url, "select pg_backend_pid() <> 0") is True
    finally:
        server.stop()

    assert not server.running
    assert not _pid_exists(pid), f"postmaster {pid} is still alive after stop()"
    with pytest.raises(ProcessLookupError):  # nor any backend of its process group
        os.killpg(pid, 0)
    assert not tmp_dir.exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    server.stop()  # idempotent
