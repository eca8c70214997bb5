"""Factories for scheduler tests: nodes, projects, jobs and snapshots in one line each.

Jobs get ids and submission order from a counter, so ``job("a")`` twice makes two jobs,
the second newer. ``settle`` runs the policy cycle after cycle, applying decisions like
the server does, until nothing changes — tests are tables run for several cycles.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from corral.scheduler.fairshare import FairSharePolicy
from corral.scheduler.model import (
    Decisions,
    DeviceView,
    JobKind,
    JobView,
    MigSliceView,
    NodeView,
    Placement,
    ProjectView,
    SchedulerConfig,
    Snapshot,
)

GIB = 1 << 30
_ids = itertools.count(1)


def node(
    name: str,
    gpus: int = 8,
    *,
    pool: str = "default",
    ready: bool = True,
    memory_gib: int = 80,
    unmanaged: Sequence[int] = (),
    mig: dict[int, Sequence[tuple[str, int]]] | None = None,
    cpus: int = 64,
    containers: bool = False,
) -> NodeView:
    """A node; ``mig={0: [("1g.10gb", 7)]}`` splits GPU 0 into seven 1g slices."""
    devices = []
    for g in range(gpus):
        slices: list[MigSliceView] = []
        for profile, count in (mig or {}).get(g, ()):
            compute = int(profile[0])
            for n in range(count):
                slices.append(MigSliceView(f"{g}:{profile}:{n}", g, profile, compute, 10 * GIB))
        devices.append(
            DeviceView(
                index=g,
                uuid=f"GPU-{name}-{g}",
                memory_bytes=memory_gib * GIB,
                busy_unmanaged=g in unmanaged,
                mig=tuple(slices),
            )
        )
    return NodeView(
        name=name,
        schedulable=ready,
        devices=tuple(devices),
        cpu_cores=cpus,
        memory_bytes=512 * GIB,
        pool=pool,
        containers=containers,
    )


def project(name: str, quota: float = 0.0, order: int = 0, **kw: object) -> ProjectView:
    return ProjectView(name=name, quota=quota, order=order, **kw)  # type: ignore[arg-type]


def projects(*specs: tuple[str, float]) -> tuple[ProjectView, ...]:
    """``projects(("a", 4), ("b", 2))``: projects with quotas, oldest first."""
    return tuple(project(name, quota, order=i) for i, (name, quota) in enumerate(specs))


def job(
    project_name: str,
    gpus: float = 1,
    *,
    kind: JobKind = "train",
    on: str | None = None,
    ids: Sequence[int] = (),
    name: str | None = None,
    **kw: object,
) -> JobView:
    """A pending job, or a running one when ``on`` (its node) and ``ids`` are given."""
    job_id = next(_ids)
    placements = (Placement(on, tuple(ids)),) if on is not None else ()
    return JobView(
        id=job_id,
        name=name or f"{project_name}-{job_id}",
        project=project_name,
        order=job_id,
        kind=kind,
        gpus=gpus,
        placements=placements,
        **kw,  # type: ignore[arg-type]
    )


def snapshot(
    nodes: Sequence[NodeView],
    jobs: Sequence[JobView],
    project_views: Sequence[ProjectView] = (),
    **kw: object,
) -> Snapshot:
    return Snapshot(
        nodes=tuple(nodes),
        running=tuple(j for j in jobs if j.placements),
        pending=tuple(j for j in jobs if not j.placements),
        projects=tuple(project_views),
        config=kw.pop("config", SchedulerConfig()),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def apply(snap: Snapshot, decisions: Decisions) -> Snapshot:
    """The snapshot after ``decisions``: bound jobs run, preempted jobs wait again."""
    running = {j.id: j for j in snap.running}
    pending = {j.id: j for j in snap.pending}
    for p in decisions.preemptions:
        victim = running.pop(p.job_id)
        pending[victim.id] = replace(victim, placements=())
    for b in decisions.bindings:
        started = pending.pop(b.job_id)
        running[started.id] = replace(started, placements=b.placements)
    return replace(
        snap,
        running=tuple(sorted(running.values(), key=lambda j: j.order)),
        pending=tuple(sorted(pending.values(), key=lambda j: j.order)),
    )


@dataclass
class Settled:
    """Where a snapshot ends after `settle`: the state, the last decisions, the history."""

    snapshot: Snapshot
    decisions: Decisions
    cycles: int
    preempted: list[int] = field(default_factory=list)
    bound: list[int] = field(default_factory=list)

    def allocated(self) -> dict[str, float]:
        return {name: round(s.allocated, 4) for name, s in self.decisions.projects.items()}

    def running(self) -> dict[str, Placement]:
        return {j.name: j.placements[0] for j in self.snapshot.running}

    def reason(self, name: str) -> str:
        by_name = {j.name: j.id for j in self.snapshot.pending}
        return self.decisions.reasons[by_name[name]]


def settle(snap: Snapshot, max_cycles: int = 10) -> Settled:
    """Schedule cycle after cycle until a cycle changes nothing (fails after ``max_cycles``)."""
    policy = FairSharePolicy()
    preempted: list[int] = []
    bound: list[int] = []
    for cycle in range(1, max_cycles + 1):
        decisions = policy.schedule(snap)
        if not decisions.bindings and not decisions.preemptions:
            return Settled(snap, decisions, cycle, preempted, bound)
        preempted += [p.job_id for p in decisions.preemptions]
        bound += [b.job_id for b in decisions.bindings]
        snap = apply(snap, decisions)
    raise AssertionError(f"not stable after {max_cycles} cycles")
