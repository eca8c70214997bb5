"""Projects: settings (quota, weight, limit, priority, pools, limits, parent, GPU memory
policy), members."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from corral.core import schemas
from corral.core.errors import AlreadyExists, InvalidRequest, NotFound
from corral.core.states import ACTIVE_JOB_STATES, JobState
from corral.scheduler import ProjectShare
from corral.server.services.accounts import Caller, get_project, get_user, is_member, require_admin
from corral.store.models import Job, Node, Project, ProjectMember, User

DEFAULT_POOL = "default"
_SETTINGS = (
    "quota",
    "weight",
    "limit",
    "priority",
    "pools",
    "interactive_limit_seconds",
    "gpu_memory_policy",
)


def known_pools(session: Session) -> set[str]:
    """The default pool and every pool a node has joined with."""
    return {DEFAULT_POOL, *session.scalars(select(Node.pool).distinct())}


def _apply(session: Session, project: Project, settings: schemas.ProjectSettings) -> None:
    given = settings.model_fields_set
    for name in _SETTINGS:
        if name in given and getattr(settings, name) is not None:
            setattr(project, name, getattr(settings, name))
    if "parent" in given and settings.parent is not None:
        parent = session.scalar(select(Project).where(Project.name == settings.parent))
        if parent is None:
            raise InvalidRequest(f"parent: unknown project {settings.parent!r}", field="parent")
        project.parent_id = parent.id


def validate(session: Session) -> None:
    """Check the settings of all projects together (after a change, before commit).

    Refuses: unknown pools, parent cycles, and children whose quotas add up to more than
    their parent's (a department's quota bounds its children's).
    """
    projects = list(session.scalars(select(Project).order_by(Project.id)))
    by_id = {p.id: p for p in projects}
    pools = known_pools(session)
    for p in projects:
        unknown = sorted(set(p.pools or []) - pools)
        if unknown:
            raise InvalidRequest(
                f"pools: unknown pool {unknown[0]!r} (pools: {', '.join(sorted(pools))})",
                field="pools",
            )
        seen = [p.name]
        cur = p
        while cur.parent_id is not None:
            cur = by_id[cur.parent_id]
            if cur.name in seen:
                chain = " → ".join([*seen[seen.index(cur.name) :], cur.name])
                raise InvalidRequest(f"parent: parent cycle {chain}", field="parent")
            seen.append(cur.name)
    for parent in projects:
        children = [c for c in projects if c.parent_id == parent.id]
        total = sum(c.quota for c in children)
        if children and total > parent.quota + 1e-9:
            names = ", ".join(c.name for c in children)
            raise InvalidRequest(
                f"quota: the projects under {parent.name!r} ({names}) have {total:g} GPUs "
                f"of quota together, more than its {parent.quota:g}",
                field="quota",
            )


def create_project(
    session: Session, caller: Caller, req: schemas.ProjectCreate, now: datetime
) -> Project:
    require_admin(caller)
    if session.scalar(select(Project).where(Project.name == req.name)) is not None:
        raise AlreadyExists(f"project {req.name!r} already exists", field="name")
    project = Project(name=req.name, created_at=now, quota=0.0, priority=0, usage_gpu_seconds=0.0)
    session.add(project)
    _apply(session, project, req)
    session.flush()
    validate(session)
    return project


def update_project(
    session: Session, caller: Caller, name: str, req: schemas.ProjectUpdate
) -> Project:
    require_admin(caller)
    project = get_project(session, name)
    for field in req.clear:
        setattr(project, "parent_id" if field == "parent" else field, None)
    _apply(session, project, req)
    session.flush()
    validate(session)
    return project


def add_member(session: Session, caller: Caller, project_name: str, user_name: str) -> Project:
    require_admin(caller)
    project = get_project(session, project_name)
    user = get_user(session, user_name)
    if not is_member(session, user.id, project.id):
        session.add(ProjectMember(project_id=project.id, user_id=user.id))
        session.flush()
    return project


def remove_member(session: Session, caller: Caller, project_name: str, user_name: str) -> Project:
    require_admin(caller)
    project = get_project(session, project_name)
    user = get_user(session, user_name)
    member = session.get(ProjectMember, {"project_id": project.id, "user_id": user.id})
    if member is None:
        raise NotFound(f"{user_name!r} is not a member of project {project_name!r}")
    session.delete(member)
    session.flush()
    return project


def project_out(
    session: Session, project: Project, shares: Mapping[str, ProjectShare] | None = None
) -> schemas.ProjectOut:
    members = session.scalars(
        select(User.name)
        .join(ProjectMember, ProjectMember.user_id == User.id)
        .where(ProjectMember.project_id == project.id)
        .order_by(User.name)
    )
    active = [s.value for s in ACTIVE_JOB_STATES]
    counts: dict[str, int] = {
        state: n
        for state, n in session.execute(
            select(Job.state, func.count())
            .where(Job.project_id == project.id, Job.state.in_(active))
            .group_by(Job.state)
        )
    }
    holding = [s.value for s in JobState if s.holds_devices]
    allocated = session.scalar(
        select(func.coalesce(func.sum(Job.gpus), 0)).where(
            Job.project_id == project.id, Job.state.in_(holding), Job.preempted_by_id.is_(None)
        )
    )
    parent = session.get(Project, project.parent_id) if project.parent_id else None
    share = (shares or {}).get(project.name)
    return schemas.ProjectOut(
        name=project.name,
        members=list(members),
        quota=project.quota,
        weight=project.quota if project.weight is None else project.weight,
        limit=project.limit,
        priority=project.priority,
        pools=list(project.pools) if project.pools is not None else None,
        interactive_limit_seconds=project.interactive_limit_seconds,
        parent=parent.name if parent else None,
        gpu_memory_policy=cast("schemas.GpuMemoryPolicy", project.gpu_memory_policy),
        fair_share=share.fair_share if share else None,
        jobs_running=sum(n for s, n in counts.items() if JobState(s).holds_devices),
        jobs_pending=counts.get(JobState.PENDING.value, 0),
        gpus_allocated=float(allocated or 0),
        created_at=project.created_at,
    )


def list_projects(
    session: Session, shares: Mapping[str, ProjectShare] | None = None
) -> list[schemas.ProjectOut]:
    rows = session.scalars(select(Project).order_by(Project.name))
    return [project_out(session, p, shares) for p in rows]
