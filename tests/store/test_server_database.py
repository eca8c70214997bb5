"""The server's database wrapper: read-only transactions and the in-process writer queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from corral.server.database import ServerDatabase, WriterQueue
from corral.store.migrate import upgrade
from corral.store.models import Project

NOW = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture
def db(database_url: str) -> Iterator[ServerDatabase]:
    upgrade(database_url)
    database = ServerDatabase(database_url)
    yield database
    database.dispose()


def test_reads_see_committed_writes(db: ServerDatabase) -> None:
    with db.tx() as s:
        s.add(Project(name="p", created_at=NOW))
    with db.read() as s:
        assert s.scalars(select(Project.name)).all() == ["p"]


def test_read_transactions_refuse_writes(db: ServerDatabase) -> None:
    with pytest.raises(DBAPIError), db.read() as s:
        s.add(Project(name="sneaky", created_at=NOW))
        s.flush()
    with db.read() as s:
        assert s.scalars(select(Project.name)).all() == []


def _wait_until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + 5
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def test_fast_writers_go_before_waiting_low_priority_writers() -> None:
    queue = WriterQueue()
    order: list[str] = []

    def writer(name: str, low: bool) -> None:
        with queue.held(low_priority=low):
            order.append(name)

    queue.acquire()  # someone holds the lock; both writers must queue behind it
    low = threading.Thread(target=writer, args=("user-submit", True))
    low.start()
    _wait_until(lambda: len(queue._cond._waiters) == 1, "the low-priority writer to wait")  # type: ignore[attr-defined]
    fast = threading.Thread(target=writer, args=("agent-report", False))
    fast.start()
    _wait_until(lambda: len(queue._cond._waiters) == 2, "both writers to wait")  # type: ignore[attr-defined]
    queue.release()
    low.join(5)
    fast.join(5)
    assert order == ["agent-report", "user-submit"]


def test_low_priority_writers_get_the_lock_when_nobody_else_waits() -> None:
    queue = WriterQueue()
    done = threading.Event()

    def writer() -> None:
        with queue.held(low_priority=True):
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    assert done.wait(5)
    t.join(5)


def test_the_writer_lock_is_reentrant_in_one_thread() -> None:
    queue = WriterQueue()
    with queue.held(), queue.held(low_priority=True):
        pass
    # Released fully: another thread can take it.
    got = threading.Event()
    t = threading.Thread(target=lambda: (queue.acquire(), got.set(), queue.release()))
    t.start()
    assert got.wait(5)
    t.join(5)
