"""Volumes: host directories an admin offers to container jobs by name, and how a job's
``--volume`` requests become the mounts its agent makes.

A job names a volume (``--volume datasets:/data``); it never names a host path unless
the server allows that (``corral server --allow-host-path-volumes``). Mounts are
resolved when the job is submitted and stored with it, so a job runs with what it was
accepted with even if the volume is changed later.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.core import schemas
from corral.core.errors import AlreadyExists, InvalidRequest, NotFound
from corral.server.services.accounts import Caller, require_admin
from corral.store.models import Job, Volume


@dataclass(frozen=True)
class ContainerPolicy:
    """What the server lets container jobs do beyond named volumes and their own UID."""

    allow_host_paths: bool = False
    allow_root: bool = False


NO_EXTRAS = ContainerPolicy()  # the default: named volumes, the owner's UID/GID


def volume_out(volume: Volume) -> schemas.VolumeOut:
    return schemas.VolumeOut(
        name=volume.name,
        host_path=volume.host_path,
        read_only=volume.read_only,
        description=volume.description,
        created_at=volume.created_at,
    )


def create_volume(
    session: Session, caller: Caller, req: schemas.VolumeCreate, now: datetime
) -> Volume:
    require_admin(caller)
    if session.scalar(select(Volume.id).where(Volume.name == req.name)) is not None:
        raise AlreadyExists(f"volume {req.name!r} already exists", field="name")
    volume = Volume(
        name=req.name,
        host_path=req.host_path,
        read_only=req.read_only,
        description=req.description,
        created_at=now,
    )
    session.add(volume)
    session.flush()
    return volume


def list_volumes(session: Session) -> list[Volume]:
    return list(session.scalars(select(Volume).order_by(Volume.name)))


def delete_volume(session: Session, caller: Caller, name: str) -> None:
    """Jobs already submitted keep their mounts (resolved at submission)."""
    require_admin(caller)
    volume = session.scalar(select(Volume).where(Volume.name == name))
    if volume is None:
        raise NotFound(f"no volume named {name!r}")
    session.delete(volume)


def resolve_mounts(
    session: Session,
    req: schemas.JobSubmit,
    user: str,
    unix_user: str,
    policy: ContainerPolicy,
) -> list[dict[str, Any]]:
    """The job's ``volumes`` as mounts (`corral.core.schemas.Mount` fields), or an
    `InvalidRequest` naming what is not allowed."""
    if req.run_as_root and not policy.allow_root:
        raise InvalidRequest(
            "run_as_root: this server runs containers as their owner's UID/GID only (an "
            "admin can allow root with `corral server --allow-root-containers`)",
            field="run_as_root",
        )
    mounts: list[dict[str, Any]] = []
    names = {v.source for v in req.volumes if not v.is_host_path}
    known = (
        {v.name: v for v in session.scalars(select(Volume).where(Volume.name.in_(names)))}
        if names
        else {}
    )
    for v in req.volumes:
        if v.is_host_path:
            if not policy.allow_host_paths:
                raise InvalidRequest(
                    f"volumes: {v.source} is a host path, and this server mounts only the "
                    "volumes an admin defined (`corral volume list`; an admin can allow host "
                    "paths with `corral server --allow-host-path-volumes`)",
                    field="volumes",
                )
            mounts.append(
                {"source": v.source, "target": v.target, "read_only": v.read_only, "volume": None}
            )
            continue
        volume = known.get(v.source)
        if volume is None:
            offered = ", ".join(sorted(x.name for x in list_volumes(session))) or "none yet"
            raise InvalidRequest(
                f"volumes: no volume named {v.source!r} (volumes: {offered}; an admin adds "
                "them with `corral volume create`)",
                field="volumes",
            )
        source = volume.host_path.replace("{user}", user).replace("{unix_user}", unix_user)
        mounts.append(
            {
                "source": source,
                "target": v.target,
                # A read-only volume stays read-only whatever the job asks.
                "read_only": v.read_only or volume.read_only,
                "volume": volume.name,
            }
        )
    return mounts


def container_spec(job: Job | Any) -> schemas.ContainerSpec | None:
    """The assignment's container part for a job row (None: a host process)."""
    if job.image is None:
        return None
    return schemas.ContainerSpec(
        image=job.image,
        shm_size_bytes=job.shm_size_bytes,
        mounts=[schemas.Mount(**m) for m in (job.volumes or [])],
        run_as_root=bool(job.run_as_root),
    )
