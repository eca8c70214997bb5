"""Properties of the fair-share policy on many random clusters (seeded, reproducible).

Every cycle's decisions must be valid — no device held twice, whole GPUs never shared,
shared GPUs never over their memory, MIG slices only to jobs of their profile, gangs in
one pool, pools, limits and interactive quotas respected, victims only running train
jobs, a reason for every job left waiting — and the runs must become stable: a cycle
that changes nothing comes, and no job is preempted over and over (no ping-pong).

Each case first runs a random workload to its stable state, then submits more jobs (new
demand), so that the second run starts from a full cluster and has to reclaim.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from sched_factories import apply

from corral.scheduler.fairshare import FairSharePolicy
from corral.scheduler.model import (
    Decisions,
    DeviceView,
    JobView,
    MigSliceView,
    NodeView,
    ProjectView,
    Snapshot,
)
from corral.scheduler.units import EPS

GIB = 1 << 30
MAX_CYCLES = 25
CASES = 400


def random_cluster(rng: random.Random) -> tuple[tuple[NodeView, ...], tuple[ProjectView, ...]]:
    nodes = []
    for i in range(rng.randint(1, 4)):
        gpus = rng.choice((2, 4, 8))
        devices = []
        for g in range(gpus):
            mig: tuple[MigSliceView, ...] = ()
            if g == 0 and rng.random() < 0.15:
                profile, slices, count = rng.choice((("1g.10gb", 1, 7), ("3g.40gb", 3, 2)))
                mig = tuple(
                    MigSliceView(f"{g}:{profile}:{n}", g, profile, slices, 10 * GIB)
                    for n in range(count)
                )
            devices.append(
                DeviceView(g, f"n{i}-{g}", 80 * GIB, busy_unmanaged=rng.random() < 0.05, mig=mig)
            )
        nodes.append(
            NodeView(
                name=f"n{i}",
                schedulable=rng.random() > 0.1,
                devices=tuple(devices),
                cpu_cores=64,
                memory_bytes=512 * GIB,
                pool=rng.choice(("default", "default", "a100")),
            )
        )
    projects: list[ProjectView] = []
    for i in range(rng.randint(2, 5)):
        projects.append(
            ProjectView(
                name=f"p{i}",
                quota=rng.choice((0, 1, 2, 2, 4, 6, 1.5)),
                weight=rng.choice((None, None, 0, 1, 3)),
                limit=rng.choice((None, None, None, 6)),
                priority=rng.choice((0, 0, 0, 1)),
                pools=rng.choice((None, None, None, ("default",))),
                order=i,
            )
        )
    if rng.random() < 0.3:
        # A department over the first two projects, with a quota that bounds theirs.
        dept = ProjectView(
            name="dept",
            quota=projects[0].quota + projects[1].quota + rng.choice((0, 2)),
            order=len(projects),
        )
        projects[0] = replace(projects[0], parent="dept")
        projects[1] = replace(projects[1], parent="dept")
        projects.append(dept)
    return tuple(nodes), tuple(projects)


def random_jobs(
    rng: random.Random, projects: tuple[ProjectView, ...], first_id: int, count: int
) -> list[JobView]:
    leaves = [p for p in projects if p.name != "dept"]
    jobs = []
    for n in range(count):
        job_id = first_id + n
        shape = rng.choice(("whole", "whole", "whole", "fraction", "memory", "mig", "gang"))
        fields: dict[str, object] = {}
        if shape == "whole":
            fields["gpus"] = rng.choice((1, 1, 2, 4, 8))
        elif shape == "fraction":
            fields["gpus"] = rng.choice((0.25, 0.5))
        elif shape == "memory":
            fields["gpu_memory_bytes"] = rng.choice((10, 20, 40)) * GIB
        elif shape == "mig":
            fields["mig_profile"] = rng.choice(("1g.10gb", "3g.40gb"))
        else:
            fields["gpus"] = rng.choice((1, 2, 4))
            fields["workers"] = 2
        jobs.append(
            JobView(
                id=job_id,
                name=f"j{job_id}",
                project=rng.choice(leaves).name,
                order=job_id,
                kind="interactive" if rng.random() < 0.15 else "train",
                priority=rng.choice((0, 0, 0, 5)),
                pool=rng.choice((None, None, None, "a100")),
                **fields,  # type: ignore[arg-type]
            )
        )
    return jobs


def run(snapshot: Snapshot) -> tuple[Snapshot, int, dict[int, int]]:
    """Cycles until nothing changes; checks each; returns (final, cycles, preemptions)."""
    policy = FairSharePolicy()
    preempted: dict[int, int] = {}
    for cycle in range(1, MAX_CYCLES + 1):
        decisions = policy.schedule(snapshot)
        check_decisions(snapshot, decisions)
        assert policy.schedule(snapshot) == decisions, "not deterministic"
        if not decisions.bindings and not decisions.preemptions:
            return snapshot, cycle, preempted
        for p in decisions.preemptions:
            preempted[p.job_id] = preempted.get(p.job_id, 0) + 1
        snapshot = apply(snapshot, decisions)
    pytest.fail(f"not stable after {MAX_CYCLES} cycles")


def check_decisions(snapshot: Snapshot, decisions: Decisions) -> None:
    running = {j.id: j for j in snapshot.running}
    pending = {j.id: j for j in snapshot.pending}
    for p in decisions.preemptions:
        victim = running[p.job_id]
        assert victim.kind == "train", f"interactive job {victim.name} preempted"
        assert p.by_job_id in pending and p.reason
    bound = {b.job_id for b in decisions.bindings}
    assert bound <= pending.keys()
    assert set(decisions.reasons) == pending.keys() - bound, "a waiting job without reason"
    after = apply(snapshot, decisions)
    check_devices(after)
    check_accounts(snapshot, after, bound)


def check_devices(snapshot: Snapshot) -> None:
    nodes = {n.name: n for n in snapshot.nodes}
    whole: dict[tuple[str, int], str] = {}
    shared: dict[tuple[str, int], int] = {}
    slices: dict[tuple[str, str], str] = {}
    projects = {p.name: p for p in snapshot.projects}
    for job in snapshot.running:
        assert len(job.placements) == max(1, job.workers), job
        pools = {nodes[p.node].pool for p in job.placements}
        assert len(pools) == 1, f"{job.name} spans pools {pools}"
        pool = pools.pop()
        if job.pool is not None:
            assert pool == job.pool, job
        allowed = projects[job.project].pools if job.project in projects else None
        if allowed is not None:
            assert pool in allowed, job
        for placement in job.placements:
            node = nodes[placement.node]
            devices = {d.index: d for d in node.devices}
            if job.mig_profile:
                parent = devices[placement.gpu_ids[0]]
                match = [m for m in parent.mig if m.id == placement.mig_slice]
                assert match and match[0].profile == job.mig_profile, job
                assert not match[0].busy_unmanaged
                slice_key = (node.name, match[0].id)
                assert slice_key not in slices, f"slice {slice_key} held twice"
                slices[slice_key] = job.name
                continue
            for gpu in placement.gpu_ids:
                device = devices[gpu]
                assert not device.busy_unmanaged and not device.mig, (job, gpu)
                key = (node.name, gpu)
                if job.gpu_memory_bytes is not None or job.gpus < 1:
                    used = job.gpu_memory_bytes or int(job.gpus * device.memory_bytes)
                    shared[key] = shared.get(key, 0) + used
                    assert shared[key] <= device.memory_bytes, f"GPU {key} over its memory"
                else:
                    assert key not in whole, f"GPU {key} held by {whole[key]} and {job.name}"
                    whole[key] = job.name
            if job.gpus >= 1:
                assert len(placement.gpu_ids) == int(job.gpus), job
    assert not set(whole) & set(shared), "a whole GPU is also shared"


def check_accounts(before: Snapshot, after: Snapshot, bound: set[int]) -> None:
    """New bindings respect limits and interactive quotas (along department paths)."""
    projects = {p.name: p for p in after.projects}

    def path(name: str) -> list[ProjectView]:
        out = []
        while name in projects:
            out.append(projects[name])
            name = projects[name].parent or ""
        return out

    def amount(job: JobView) -> float:
        if job.mig_profile:
            return int(job.mig_profile[0]) / 7
        if job.gpu_memory_bytes is not None:
            return job.gpu_memory_bytes / (80 * GIB)
        return job.gpus * job.workers

    for project in projects.values():
        members = [j for j in after.running if project in path(j.project)]
        new = [j for j in members if j.id in bound]
        if not new:
            continue
        total = sum(amount(j) for j in members)
        if project.limit is not None:
            assert total <= project.limit + EPS, f"{project.name} over its limit"
        if any(j.kind == "interactive" for j in new):
            interactive = sum(amount(j) for j in members if j.kind == "interactive")
            assert interactive <= project.quota + EPS, f"{project.name} interactive over quota"


@pytest.mark.parametrize("seed", range(CASES))
def test_random_clusters_are_valid_and_become_stable(seed: int) -> None:
    rng = random.Random(seed)
    nodes, projects = random_cluster(rng)
    jobs = random_jobs(rng, projects, 1, rng.randint(3, 18))
    snapshot = Snapshot(nodes=nodes, running=(), pending=tuple(jobs), projects=projects)
    stable, _, _ = run(snapshot)
    more = random_jobs(rng, projects, 100, rng.randint(2, 10))
    stable = replace(stable, pending=(*stable.pending, *more))
    _, cycles, preempted = run(stable)
    assert all(n <= 2 for n in preempted.values()), f"ping-pong: {preempted}"
    assert cycles <= 10, f"took {cycles} cycles to become stable"
