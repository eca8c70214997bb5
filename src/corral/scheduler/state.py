"""One cycle's working state: projects, accounts, fair shares, free devices, decisions.

Built from a `Snapshot` without copying it: running jobs are replayed onto a
`ClusterState` (their devices become taken) and onto per-project accounts; pending
jobs only add to demand. Then fair shares are divided (`corral.scheduler.divide`) and
stay fixed for the cycle. They depend on demand (running + pending jobs, which binding
and preempting do not change) and never on what is allocated, which is what keeps
the policy from undoing its own decisions in the next cycle.

`bind` and `preempt` are the only ways the steps change anything; both update the
devices, the accounts along the project's path, and the decisions in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.scheduler.cluster import ClusterState
from corral.scheduler.divide import divide_tree
from corral.scheduler.jobs import JobInfo
from corral.scheduler.model import (
    Binding,
    Decisions,
    JobView,
    Placement,
    Preemption,
    Snapshot,
)
from corral.scheduler.place import occupy, vacate
from corral.scheduler.projects import ProjectTree, build_tree
from corral.scheduler.units import EPS


class CycleState:
    """Everything the policy's steps read and change during one cycle. Amounts in GPUs."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.cluster = ClusterState(snapshot)
        self.tree: ProjectTree = build_tree(
            snapshot.projects, (j.project for j in (*snapshot.running, *snapshot.pending))
        )
        size = len(self.tree)
        self.allocated = [0.0] * size
        """GPUs held by running jobs of each project's subtree (changes as we go)."""
        self.interactive = [0.0] * size
        """GPUs held by interactive jobs of each project's subtree."""
        self.demand = [0.0] * size
        """GPUs of running + pending jobs of each project's subtree."""
        self.quota = [node.quota for node in self.tree.nodes]
        self.limit = [node.limit for node in self.tree.nodes]
        self.epoch = 0
        """Grows whenever room for victim searches may have grown: a project went above its
        fair share or quota (its jobs became victims), or a preemption left devices free."""
        self.changes = 0
        """Grows with every binding and preemption (what is free has changed)."""
        self.decisions = Decisions()
        self._pools_cache: dict[
            tuple[int, str | None, bool], tuple[tuple[int, ...], str | None]
        ] = {}
        self.fair: list[float] = []
        """Fair share of each project (GPUs), divided once the demand is known."""
        self.running = self._jobs(snapshot.running)
        self.pending = self._jobs(snapshot.pending)
        for node in self.tree.nodes:
            if node.pools is not None and not node.is_department:
                for name in node.pools:
                    for i in self.cluster.pool_index.get(name, ()):
                        self.cluster.pools[i].reserved += 1
        held_elsewhere = 0.0
        index = self.cluster.node_index
        for job in self.running:
            job.placements = occupy(self.cluster, job, job.placements)
            self._account(job, +1.0)
            if not job.schedulable:
                held_elsewhere += job.unit * sum(p.node not in index for p in job.placements)
        for job in self.running + self.pending:
            for i in self.tree[job.leaf].path:
                self.demand[i] += job.amount
        # GPUs on unschedulable nodes still count while jobs hold them (those jobs are
        # never preempted by the policy, so this does not change from cycle to cycle).
        self.capacity = self.cluster.capacity + held_elsewhere
        self.fair = divide_tree(self.tree, self._caps(), self.capacity)
        self.victims = self._victim_lists()

    def _jobs(self, views: Sequence[JobView]) -> list[JobInfo]:
        tree, cluster, cache = self.tree, self.cluster, self._pools_cache
        jobs = [JobInfo(view, tree[tree.by_name[view.project]], cluster, cache) for view in views]
        jobs.sort(key=lambda j: (j.order, j.id))
        return jobs

    def _caps(self) -> list[float]:
        """What each project can use: demand, bounded by its limit and its pools (GPUs)."""
        caps: list[float] = []
        for node in self.tree.nodes:
            cap = self.demand[node.idx]
            if node.limit is not None:
                cap = min(cap, node.limit)
            if node.pools is not None:
                pooled = sum(
                    self.cluster.pools[i].capacity
                    for name, indices in self.cluster.pool_index.items()
                    if name in node.pools
                    for i in indices
                )
                cap = min(cap, max(pooled, self.allocated[node.idx]))
            caps.append(cap)
        return caps

    def _victim_lists(self) -> list[list[JobInfo]]:
        """Per project: its running train jobs that could be preempted, first victim first."""
        lists: list[list[JobInfo]] = [[] for _ in self.tree.nodes]
        for job in self.running:
            if not job.interactive and job.schedulable:
                lists[job.leaf].append(job)
        for jobs in lists:
            jobs.sort(key=lambda j: j.victim_rank)
        return lists

    # ------------------------------------------------------------------ accounts

    def _account(self, job: JobInfo, sign: float) -> None:
        amount = job.amount * sign
        for i in self.tree[job.leaf].path:
            before = self.allocated[i]
            self.allocated[i] = before + amount
            if job.interactive:
                self.interactive[i] += amount
            if (
                sign > 0
                and self.fair
                and (
                    before <= self.fair[i] + EPS < self.allocated[i]
                    or before <= self.quota[i] + EPS < self.allocated[i]
                )
            ):
                # New victims may exist now; forget remembered failures.
                self.epoch += 1

    def ratio(self, idx: int) -> float:
        """Allocated / fair share of project ``idx`` (inf when its share is 0)."""
        fair = self.fair[idx]
        if fair <= EPS:
            return float("inf") if self.allocated[idx] > EPS else 0.0
        return self.allocated[idx] / fair

    # ------------------------------------------------------------------ decisions

    def bind(self, job: JobInfo, placements: tuple[Placement, ...]) -> None:
        """Start pending ``job`` at ``placements`` (devices taken, accounts updated)."""
        job.placements = occupy(self.cluster, job, placements)
        job.locate(self.cluster)
        job.bound_now = True
        self.changes += 1
        self._account(job, +1.0)
        self.decisions.bindings.append(Binding(job_id=job.id, placements=job.placements))

    def preempt(self, victim: JobInfo, by: JobInfo, reason: str) -> None:
        """Stop running ``victim`` for ``by`` (devices freed now, for ``by`` to take)."""
        vacate(self.cluster, victim)
        victim.gone = True
        self.changes += 1
        self._account(victim, -1.0)
        self.decisions.preemptions.append(
            Preemption(job_id=victim.id, by_job_id=by.id, reason=reason)
        )

    def undo_preemptions(self, victims: Sequence[JobInfo]) -> None:
        """Take back the last ``len(victims)`` preemptions (their job could not be placed)."""
        for victim in reversed(victims):
            victim.placements = occupy(self.cluster, victim, victim.placements)
            victim.gone = False
            self._account(victim, +1.0)
            self.decisions.preemptions.pop()
