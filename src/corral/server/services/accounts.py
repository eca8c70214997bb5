"""Users, their tokens, projects and memberships."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.core import schemas
from corral.core.errors import AlreadyExists, Forbidden, NotFound
from corral.core.states import Role
from corral.server.services.auth import create_user_token
from corral.store.models import Project, ProjectMember, User

DEFAULT_PROJECT = "default"


@dataclass(frozen=True)
class Caller:
    """Who is asking: a user resolved from an API token."""

    id: int
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise Forbidden("only an admin may do this")


def get_user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"user {name!r} not found", field="user")
    return user


def get_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFound(f"project {name!r} does not exist", field="project")
    return project


def project_names_of(session: Session, user_id: int) -> list[str]:
    rows = session.scalars(
        select(Project.name)
        .join(ProjectMember, ProjectMember.project_id == Project.id)
        .where(ProjectMember.user_id == user_id)
        .order_by(Project.name)
    )
    return list(rows)


def is_member(session: Session, user_id: int, project_id: int) -> bool:
    return session.get(ProjectMember, {"project_id": project_id, "user_id": user_id}) is not None


def can_use_project(session: Session, caller: Caller, project: Project) -> bool:
    return caller.is_admin or is_member(session, caller.id, project.id)


def create_user(session: Session, caller: Caller, req: schemas.UserCreate, now: datetime) -> User:
    require_admin(caller)
    if session.scalar(select(User).where(User.name == req.name)) is not None:
        raise AlreadyExists(f"user {req.name!r} already exists", field="name")
    user = User(
        name=req.name, role=req.role.value, unix_user=req.unix_user or req.name, created_at=now
    )
    session.add(user)
    session.flush()
    return user


def create_token(
    session: Session, caller: Caller, user_name: str, description: str, now: datetime
) -> tuple[User, str]:
    user = get_user(session, user_name)
    if not caller.is_admin and caller.id != user.id:
        raise Forbidden("you may only make tokens for yourself")
    return user, create_user_token(session, user, now, description)


def user_out(session: Session, user: User) -> schemas.UserOut:
    return schemas.UserOut(
        name=user.name,
        role=Role(user.role),
        unix_user=user.unix_user,
        projects=project_names_of(session, user.id),
        created_at=user.created_at,
    )


def list_users(session: Session, caller: Caller) -> list[schemas.UserOut]:
    require_admin(caller)
    return [user_out(session, u) for u in session.scalars(select(User).order_by(User.name))]
