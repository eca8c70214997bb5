"""The server's view of the store: writers take turns in-process, readers never wait.

`corral.store.db.Database` starts every SQLite transaction with ``BEGIN IMMEDIATE`` and
lets SQLite's busy handler arbitrate between writers. That handler *polls*: a waiting
transaction sleeps 1, 2, 5, … up to 100 ms between tries, so under load (hundreds of
requests a second, each in its own worker thread) most of a request's time was spent
asleep in ``BEGIN IMMEDIATE`` while the lock was already free. Two changes, both for
SQLite only (PostgreSQL has real lock queues):

- ``tx()`` first takes a process-wide lock, so the server's own writers queue on it and
  are handed the database the moment the previous one commits. ``BEGIN IMMEDIATE`` and
  the busy timeout stay as they were, for any other process that writes. Users'
  requests (``tx(low_priority=True)``) let waiting agent reports and scheduler cycles
  go first: under a flood of submissions, GPUs are still freed and refilled at once.
- ``read()`` is a read-only transaction on a second pool of connections that start with
  a deferred ``BEGIN`` and have ``PRAGMA query_only``: in WAL mode it sees one
  consistent snapshot, takes no lock and does not wait for writers (nor they for it),
  and SQLite refuses any write attempted through it. On PostgreSQL it is an ordinary
  transaction marked read only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from corral.store.db import Database


def _sqlite_read_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions start in "begin" below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # already so (set by the writers); no-op
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA query_only=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")  # deferred: a read snapshot, no lock

    return engine


def _in_memory(url: str) -> bool:
    path = url.split("///", 1)[1] if "///" in url else ""
    return not path or path == ":memory:" or "mode=memory" in url


class WriterQueue:
    """The in-process write lock: re-entrant, and with a fast lane.

    Writers that keep the GPUs busy (the agents' reports, the scheduler) take the lock
    before writers of the ``low_priority`` kind (users' requests) that are waiting at
    the same time, so a burst of submissions cannot hold back the report that frees a
    GPU or the cycle that binds it. Low-priority writers still get the lock whenever no
    other writer is waiting.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._waiting_fast = 0

    def acquire(self, *, low_priority: bool = False) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            if not low_priority:
                self._waiting_fast += 1
            try:
                while self._owner is not None or (low_priority and self._waiting_fast):
                    self._cond.wait()
            finally:
                if not low_priority:
                    self._waiting_fast -= 1
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    @contextmanager
    def held(self, *, low_priority: bool = False) -> Iterator[None]:
        self.acquire(low_priority=low_priority)
        try:
            yield
        finally:
            self.release()


class ServerDatabase(Database):
    """`Database` plus an in-process writer queue and lock-free read transactions."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._sqlite = url.startswith("sqlite")
        # Re-entrant so a (mistaken) nested tx() in one thread fails as before, on
        # SQLite's busy timeout, rather than hanging on this lock for ever.
        self._writers: WriterQueue | None = WriterQueue() if self._sqlite else None
        self._read_engine: Engine | None = None
        if self._sqlite and not _in_memory(url):
            self._read_engine = _sqlite_read_engine(url)
            self._reads = sessionmaker(self._read_engine, expire_on_commit=False)
        elif self._sqlite:
            self._reads = self._sessions  # one in-memory database: share its connections
        else:
            self._reads = sessionmaker(
                self.engine.execution_options(postgresql_readonly=True), expire_on_commit=False
            )

    @contextmanager
    def tx(self, *, low_priority: bool = False) -> Iterator[Session]:
        """A read-write transaction: committed on success, rolled back on error.

        ``low_priority``: a user's request; on SQLite, writers that are not (agents'
        reports, the scheduler) waiting at the same time go first.
        """
        if self._writers is None:
            with super().tx() as session:
                yield session
            return
        with self._writers.held(low_priority=low_priority), super().tx() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (one snapshot); writes through it are refused."""
        if self._reads is self._sessions:
            with self.tx() as session:
                yield session
            return
        with self._reads() as session, session.begin():
            yield session

    def dispose(self) -> None:
        super().dispose()
        if self._read_engine is not None:
            self._read_engine.dispose()
