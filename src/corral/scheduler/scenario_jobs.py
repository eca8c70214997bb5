"""Reading the ``jobs:`` of a scenario: requests, states, and where running jobs sit.

Which request combinations are valid (one kind of request per job):

* ``gpus`` — whole GPUs per worker (default 1), or a fraction below 1 of one GPU; a
  fraction is for one worker only (no fractional gangs), and 1.5 is neither;
* ``gpu_memory_gib`` — GPU memory of one GPU, one worker only;
* ``mig_profile`` — one MIG slice of that profile (e.g. ``1g.10gb``), one worker only;
* ``gpus: 0`` with ``cpus``/``memory_gib`` — a job that needs no GPU.

A job belongs to a project that is not a department, may only name a pool its project
(and the project's departments) may use, and has ``node``/``gpu_ids`` exactly when it is
``running`` (`corral.scheduler.scenario_placements` checks those).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from corral.scheduler.model import JobKind, JobView, Placement, ProjectView
from corral.scheduler.scenario_fields import GIB, Problems, Reader, pools_phrase, show
from corral.scheduler.scenario_placements import Ledger
from corral.scheduler.units import mig_profile_slices

JOB_KEYS = (
    "name", "project", "kind", "gpus", "gpu_memory_gib", "mig_profile", "workers",
    "priority", "pool", "state", "node", "gpu_ids", "cpus", "memory_gib",
)  # fmt: skip


@dataclass(frozen=True)
class Catalog:
    """What jobs are checked against: the projects, which are departments, the pools."""

    projects: Mapping[str, ProjectView]
    departments: set[str]
    pools: set[str]

    def allowed_pools(self, project: str) -> set[str] | None:
        """Pools a project may use: its own and its departments' (None: all)."""
        allowed: set[str] | None = None
        seen: set[str] = set()
        current: str | None = project
        while current is not None and current in self.projects and current not in seen:
            seen.add(current)
            view = self.projects[current]
            if view.pools is not None:
                allowed = set(view.pools) if allowed is None else allowed & set(view.pools)
            current = view.parent
        return allowed


class JobsReader:
    """Reads jobs; running ones are checked against a ledger of who holds which device."""

    def __init__(self, catalog: Catalog, ledger: Ledger, problems: Problems) -> None:
        self.catalog = catalog
        self.problems = problems
        self.names: set[str] = set()
        self.views: list[JobView] = []
        self.ledger = ledger

    def read(self, i: int, item: object) -> None:
        """Read ``jobs[i]``; a job with problems is recorded as problems, not as a view."""
        b = self.catalog
        r = Reader(item, f"jobs[{i}]", self.problems, JOB_KEYS)
        name = r.text("name", required=True)
        if name is not None and name in self.names:
            r.bad("name", f"duplicate job {name!r}")
            name = None
        project = r.text("project", required=True)
        if project is not None and project not in b.projects:
            r.bad("project", f"unknown project {project!r}")
            project = None
        elif project is not None and project in b.departments:
            r.bad("project", f"{project} is a department: jobs go to its projects")
            project = None
        kind = r.choice("kind", "train", ("train", "interactive"))
        workers = r.integer("workers", 1, minimum=1) or 1
        gpus, memory, profile = self._request(r, workers)
        priority = r.integer("priority", 0) or 0
        pool = r.text("pool")
        if pool is not None and pool not in b.pools:
            r.bad("pool", f"unknown pool {pool!r} ({pools_phrase(b.pools)})")
            pool = None
        allowed = b.allowed_pools(project) if project else None
        if pool is not None and allowed is not None and pool not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            r.bad("pool", f"project {project} may not use pool {pool!r} (its pools: {listed})")
            pool = None
        if pool is not None:
            allowed = {pool}
        state = r.choice("state", "pending", ("pending", "running"))
        cpus = r.number("cpus", None)
        host_memory = r.number("memory_gib", None)
        placements: tuple[Placement, ...] = ()
        if state == "running":
            placements = self.ledger.place(
                r, name or f"jobs[{i}]", workers, gpus, memory, profile, allowed
            )
        else:
            for key in ("node", "gpu_ids"):
                if r.has(key):
                    r.bad(key, "only running jobs have one (this job is pending)")
        if name is None or project is None:
            return
        self.names.add(name)
        job_kind: JobKind = "interactive" if kind == "interactive" else "train"
        self.views.append(
            JobView(
                id=i + 1,
                name=name,
                project=project,
                order=i,
                kind=job_kind,
                priority=priority,
                gpus=gpus,
                gpu_memory_bytes=memory,
                mig_profile=profile,
                workers=workers,
                pool=pool,
                cpus=cpus,
                memory_bytes=None if host_memory is None else int(host_memory * GIB),
                placements=placements,
            )
        )

    def _request(self, r: Reader, workers: int) -> tuple[float, int | None, str | None]:
        """(gpus, memory bytes, MIG profile) per worker; exactly one kind of request."""
        given = [k for k in ("gpus", "gpu_memory_gib", "mig_profile") if r.has(k)]
        if len(given) > 1:
            r.bad(given[1], f"give only one of gpus, gpu_memory_gib and mig_profile ({given[0]} "
                  "is given too)")  # fmt: skip
            return 1.0, None, None
        if "gpu_memory_gib" in given:
            memory = r.number("gpu_memory_gib", None, strict=True)
            if memory is not None and workers > 1:
                r.bad("workers", "a GPU-memory request is for one worker (got workers > 1)")
            return 0.0, None if memory is None else int(memory * GIB), None
        if "mig_profile" in given:
            profile = r.text("mig_profile")
            if profile is not None and mig_profile_slices(profile) is None:
                r.bad("mig_profile", f"not a MIG profile such as 1g.10gb (got {profile!r})")
            if workers > 1:
                r.bad("workers", "a MIG request is for one worker (got workers > 1)")
            return 0.0, None, profile
        gpus = r.number("gpus", 1.0)
        if gpus is None:
            return 1.0, None, None
        if not gpus.is_integer():
            if gpus > 1:
                r.bad("gpus", f"must be a whole number or a fraction below 1 (got {show(gpus)})")
            elif workers > 1:
                r.bad("gpus", f"a fraction ({show(gpus)}) cannot be combined with workers > 1")
        return gpus, None, None
