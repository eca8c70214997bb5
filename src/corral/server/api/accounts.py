"""Who am I, users and their tokens, projects and members, join tokens."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Response

from corral.core import schemas
from corral.server.api.deps import CallerDep, CtxDep
from corral.server.services import accounts, projects, volumes
from corral.server.services.auth import create_join_token

router = APIRouter()


@router.get("/whoami", response_model=schemas.WhoAmI, tags=["users"])
def whoami(ctx: CtxDep, caller: CallerDep) -> schemas.WhoAmI:
    with ctx.db.read() as s:
        return schemas.WhoAmI(
            name=caller.name, role=caller.role, projects=accounts.project_names_of(s, caller.id)
        )


@router.post("/users", response_model=schemas.UserOut, status_code=201, tags=["users"])
def create_user(ctx: CtxDep, caller: CallerDep, body: schemas.UserCreate) -> schemas.UserOut:
    with ctx.db.tx() as s:
        user = accounts.create_user(s, caller, body, ctx.clock.now())
        return accounts.user_out(s, user)


@router.get("/users", tags=["users"])
def list_users(ctx: CtxDep, caller: CallerDep) -> dict[str, list[schemas.UserOut]]:
    with ctx.db.read() as s:
        return {"users": accounts.list_users(s, caller)}


@router.post(
    "/users/{name}/tokens", response_model=schemas.TokenOut, status_code=201, tags=["users"]
)
def create_token(
    ctx: CtxDep, caller: CallerDep, name: str, body: schemas.TokenCreate
) -> schemas.TokenOut:
    now = ctx.clock.now()
    with ctx.db.tx() as s:
        user, token = accounts.create_token(s, caller, name, body.description, now)
        return schemas.TokenOut(
            user=user.name, token=token, description=body.description, created_at=now
        )


@router.post("/projects", response_model=schemas.ProjectOut, status_code=201, tags=["projects"])
def create_project(
    ctx: CtxDep, caller: CallerDep, body: schemas.ProjectCreate
) -> schemas.ProjectOut:
    with ctx.db.tx() as s:
        project = projects.create_project(s, caller, body, ctx.clock.now())
        return projects.project_out(s, project, ctx.scheduling.shares)


@router.get("/projects", tags=["projects"])
def list_projects(ctx: CtxDep, caller: CallerDep) -> dict[str, list[schemas.ProjectOut]]:
    with ctx.db.read() as s:
        return {"projects": projects.list_projects(s, ctx.scheduling.shares)}


@router.get("/projects/{name}", response_model=schemas.ProjectOut, tags=["projects"])
def get_project(ctx: CtxDep, caller: CallerDep, name: str) -> schemas.ProjectOut:
    with ctx.db.read() as s:
        return projects.project_out(s, accounts.get_project(s, name), ctx.scheduling.shares)


@router.patch("/projects/{name}", response_model=schemas.ProjectOut, tags=["projects"])
def update_project(
    ctx: CtxDep, caller: CallerDep, name: str, body: schemas.ProjectUpdate
) -> schemas.ProjectOut:
    with ctx.db.tx() as s:
        project = projects.update_project(s, caller, name, body)
        out = projects.project_out(s, project, ctx.scheduling.shares)
    ctx.signals.wake_scheduler()
    return out


@router.post("/projects/{name}/members", response_model=schemas.ProjectOut, tags=["projects"])
def add_member(
    ctx: CtxDep, caller: CallerDep, name: str, body: schemas.ProjectMemberAdd
) -> schemas.ProjectOut:
    with ctx.db.tx() as s:
        project = projects.add_member(s, caller, name, body.user)
        return projects.project_out(s, project, ctx.scheduling.shares)


@router.delete(
    "/projects/{name}/members/{user}", response_model=schemas.ProjectOut, tags=["projects"]
)
def remove_member(ctx: CtxDep, caller: CallerDep, name: str, user: str) -> schemas.ProjectOut:
    with ctx.db.tx() as s:
        project = projects.remove_member(s, caller, name, user)
        return projects.project_out(s, project, ctx.scheduling.shares)


@router.post("/join-tokens", response_model=schemas.JoinTokenOut, status_code=201, tags=["nodes"])
def create_join(
    ctx: CtxDep, caller: CallerDep, body: schemas.JoinTokenCreate | None = None
) -> schemas.JoinTokenOut:
    accounts.require_admin(caller)
    now = ctx.clock.now()
    ttl = body.ttl_seconds if body else None
    expires = now + timedelta(seconds=ttl) if ttl else None
    with ctx.db.tx() as s:
        token = create_join_token(s, now, expires)
    return schemas.JoinTokenOut(token=token, created_at=now, expires_at=expires)


@router.get("/volumes", response_model=schemas.VolumeList, tags=["volumes"])
def list_volumes(ctx: CtxDep, caller: CallerDep) -> schemas.VolumeList:
    """The volumes container jobs may mount by name (``--volume NAME:/path``)."""
    with ctx.db.read() as s:
        return schemas.VolumeList(volumes=[volumes.volume_out(v) for v in volumes.list_volumes(s)])


@router.post("/volumes", response_model=schemas.VolumeOut, status_code=201, tags=["volumes"])
def create_volume(ctx: CtxDep, caller: CallerDep, body: schemas.VolumeCreate) -> schemas.VolumeOut:
    """Offer a host directory to container jobs (admins only)."""
    with ctx.db.tx() as s:
        return volumes.volume_out(volumes.create_volume(s, caller, body, ctx.clock.now()))


@router.delete("/volumes/{name}", status_code=204, tags=["volumes"])
def delete_volume(ctx: CtxDep, caller: CallerDep, name: str) -> Response:
    """Stop offering a volume (admins only); jobs submitted before keep their mounts."""
    with ctx.db.tx() as s:
        volumes.delete_volume(s, caller, name)
    return Response(status_code=204)
