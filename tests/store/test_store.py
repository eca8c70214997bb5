"""The store on SQLite and PostgreSQL: migrations and the invariants the database enforces."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from corral.store.db import Database
from corral.store.migrate import upgrade
from corral.store.models import Gpu, GpuAllocation, Job, Node, Project, User

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(database_url: str) -> Database:
    upgrade(database_url)
    database = Database(database_url)
    yield database  # type: ignore[misc]
    database.dispose()


def _seed(db: Database) -> tuple[int, int, int]:
    with db.tx() as s:
        user = User(name="alice", role="user", unix_user="alice", created_at=NOW)
        project = Project(name="p", created_at=NOW)
        node = Node(
            name="n1",
            state="ready",
            hostname="n1",
            cpu_cores=8,
            memory_bytes=1 << 34,
            simulated=True,
            gpu_backend="simulated",
            agent_version="t",
            runs_jobs_as="",
            token_hash="h",
            generation=1,
            registered_at=NOW,
            state_changed_at=NOW,
            gpus=[
                Gpu(index=i, uuid=f"U{i}", model="m", memory_bytes=1, simulated=True)
                for i in range(2)
            ],
        )
        s.add_all([user, project, node])
        s.flush()
        return user.id, project.id, node.id


def _job(user_id: int, project_id: int, name: str, deleted: bool = False) -> Job:
    return Job(
        name=name,
        project_id=project_id,
        user_id=user_id,
        kind="train",
        state="pending",
        gpus=1,
        command=["true"],
        env={},
        grace_seconds=10,
        attempt=0,
        gpu_ids=[],
        created_at=NOW,
        deleted=deleted,
    )


def test_migrations_are_idempotent_and_create_every_table(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)
    db = Database(database_url)
    try:
        tables = set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()
    assert {
        "users",
        "api_tokens",
        "join_tokens",
        "projects",
        "project_members",
        "nodes",
        "gpus",
        "jobs",
        "gpu_allocations",
        "job_events",
        "node_events",
        "alembic_version",
    } <= tables


def test_a_gpu_cannot_be_allocated_twice(db: Database) -> None:
    user_id, project_id, node_id = _seed(db)
    with db.tx() as s:
        a, b = _job(user_id, project_id, "a"), _job(user_id, project_id, "b")
        s.add_all([a, b])
        s.flush()
        s.add(GpuAllocation(node_id=node_id, gpu_index=0, job_id=a.id))
        ids = (a.id, b.id)
    with pytest.raises(IntegrityError), db.tx() as s:
        s.add(GpuAllocation(node_id=node_id, gpu_index=0, job_id=ids[1]))
    with db.tx() as s:
        holders = s.scalars(select(GpuAllocation.job_id)).all()
    assert holders == [ids[0]]


def test_live_job_names_are_unique_per_project_but_deleted_ones_free_the_name(
    db: Database,
) -> None:
    user_id, project_id, _ = _seed(db)
    with db.tx() as s:
        s.add(_job(user_id, project_id, "x", deleted=True))
        s.add(_job(user_id, project_id, "x", deleted=True))
        s.add(_job(user_id, project_id, "x"))
    with pytest.raises(IntegrityError), db.tx() as s:
        s.add(_job(user_id, project_id, "x"))
    with db.tx() as s:
        assert len(s.scalars(select(Job).where(Job.name == "x")).all()) == 3


def test_timestamps_come_back_as_aware_utc(db: Database) -> None:
    user_id, project_id, _ = _seed(db)
    with db.tx() as s:
        s.add(_job(user_id, project_id, "t"))
    with db.tx() as s:
        job = s.scalars(select(Job)).one()
    assert job.created_at == NOW and job.created_at.tzinfo is not None


def test_naive_datetimes_are_refused(db: Database) -> None:
    with pytest.raises(Exception, match="naive datetime"), db.tx() as s:
        s.add(Project(name="naive", created_at=datetime(2026, 1, 1)))
        s.flush()


def test_json_columns_round_trip(db: Database) -> None:
    user_id, project_id, _ = _seed(db)
    with db.tx() as s:
        job = _job(user_id, project_id, "j")
        job.command = ["python", "-c", "print('é ✓')", "--flag=a b"]
        job.env = {"A": "1", "B": "x=y"}
        s.add(job)
    with db.tx() as s:
        got = s.scalars(select(Job)).one()
    assert got.command == ["python", "-c", "print('é ✓')", "--flag=a b"]
    assert got.env == {"A": "1", "B": "x=y"}
