"""Time limits: interactive jobs are stopped when their project's limit passes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.core.quantities import format_duration
from corral.core.states import JobKind, JobState
from corral.server.services.jobs import change_state, notify_job_nodes
from corral.store.models import Job, Project


def stop_overdue_interactive(session: Session, now: datetime) -> set[int]:
    """Stop running interactive jobs past their project's interactive limit.

    Returns the ids of the nodes whose desired state changed.
    """
    changed: set[int] = set()
    rows = session.execute(
        select(Job, Project.interactive_limit_seconds)
        .join(Project, Job.project_id == Project.id)
        .where(
            Job.kind == JobKind.INTERACTIVE.value,
            Job.state == JobState.RUNNING.value,
            Project.interactive_limit_seconds.is_not(None),
            Job.started_at.is_not(None),
        )
    )
    for job, limit in rows:
        assert job.started_at is not None and limit is not None
        if (now - job.started_at).total_seconds() < limit:
            continue
        reason = (
            f"interactive time limit of project {job.project.name} "
            f"({format_duration(limit)}) reached"
        )
        change_state(session, job, JobState.STOPPING, now, reason, reason=reason)
        changed |= notify_job_nodes(session, job)
    return changed
