"""The fair-share policy: Run:ai's semantics as small pure steps (docs/scheduler.md).

One cycle:

1. **Divide** (`CycleState`, `corral.scheduler.divide`): every project's fair share.
2. **Within share** (phase A): projects take turns, the one furthest below its share
   first (`Order.serve_key`), each offering its best-ranked pending job. A job that keeps
   its project within its share (at every level of departments) starts on free devices;
   if none fit it *reclaims* (rule 3): preempts train jobs of projects above their share
   — or above their quota when the asker is below its quota. Failing that, it may
   preempt lower-ranked train jobs of its own project (rule 4). Interactive jobs start
   only within quota, on free devices or by the same steps.
3. **Over share** (phase B): train jobs that would take their project over its share
   get the free devices nobody within share could use (most deprived project first),
   or swap in for lower-ranked jobs of their own project (rule 4).
4. **Reasons and numbers**: every job still pending gets a reason; every project its
   quota, fair share, allocation and pending count.

Why the result is stable (rule 5): fair shares depend on demand only, so they do not
move when jobs start or stop. Reclaim only moves GPUs from projects above their share
(or quota) to projects that stay within theirs, so the total excess above shares (then
above quotas) can only fall, and the asker is never a victim in turn. One loop this does
not exclude by itself — a victim left below its quota while the asker ends above its
own — is refused explicitly (`admit.no_way_back`). Jobs started over share in phase B take
devices every within-share job had already been offered, and jobs bound in a cycle are
never victims in the same cycle. The randomised property test
(tests/unit/scheduler/test_sched_properties.py) checks all of this on many clusters.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator

from corral.scheduler import reasons
from corral.scheduler.admit import (
    Standing,
    asker_stays_fair,
    interactive_over_quota,
    no_way_back,
    over_limit,
    standing_of,
    swap_must_free,
    within_quota,
)
from corral.scheduler.jobs import JobInfo
from corral.scheduler.model import Decisions, ProjectShare, Snapshot
from corral.scheduler.order import Order
from corral.scheduler.place import find_free
from corral.scheduler.state import CycleState
from corral.scheduler.units import EPS
from corral.scheduler.victims import (
    Mode,
    Relief,
    find_relief,
    leaves_free,
    outranks,
    priority_line,
    reclaim_line,
)


class FairSharePolicy:
    """Fair-share GPU scheduling with quotas, over-quota weights, reclaim and priorities.

    Pure and deterministic: no I/O, no clock; the same snapshot gives the same decisions.
    """

    def schedule(self, snapshot: Snapshot) -> Decisions:
        """One cycle: decide bindings, preemptions, reasons and project numbers."""
        state = CycleState(snapshot)
        cycle = _Cycle(state)
        cycle.run()
        return state.decisions


class _Cycle:
    def __init__(self, state: CycleState) -> None:
        self.state = state
        self.order = Order(state)
        self.waiting: dict[int, str] = {}
        """Pending job id → why it is still waiting (filled as jobs are turned down)."""
        self.failed: dict[tuple[object, ...], tuple[int, float]] = {}
        """Victim searches that found nothing: key → (epoch, smallest need that failed)."""
        self.said: dict[tuple[object, ...], str] = {}
        """Reasons already worded, by everything they depend on."""

    def run(self) -> None:
        over = self._within_share()
        self._over_share(over)
        self._report()

    # ------------------------------------------------------------------ turns

    def _turns(self, jobs: list[JobInfo]) -> Iterator[JobInfo]:
        """``jobs`` one at a time: next from the project furthest below its share."""
        queues: dict[int, deque[JobInfo]] = {}
        for job in sorted(jobs, key=lambda j: j.rank):
            queues.setdefault(job.leaf, deque()).append(job)
        serve_key = self.order.serve_key
        heap = [(serve_key(leaf), leaf) for leaf in queues]
        heapq.heapify(heap)
        while heap:
            _, leaf = heapq.heappop(heap)
            queue = queues[leaf]
            yield queue.popleft()
            if queue:
                heapq.heappush(heap, (serve_key(leaf), leaf))

    # ------------------------------------------------------------------ phase A

    def _within_share(self) -> list[JobInfo]:
        """Start what fits within shares (reclaiming if needed); return the rest to try."""
        state = self.state
        over: list[JobInfo] = []
        for job in self._turns(state.pending):
            if self._refused(job):
                continue
            standing = standing_of(self.state, job)
            if job.interactive:
                # Within quota (checked in _refused), so free devices are its right even
                # over its share; beyond that only by reclaim or its own project's jobs.
                placed = self._start_free(job)
                if not placed and standing != "over":
                    placed = self._reclaim(job)
                if not placed:
                    placed = self._by_priority(job)
                if not placed:
                    self._wait(job, standing)
                continue
            if standing == "within":
                if not (self._start_free(job) or self._reclaim(job) or self._by_priority(job)):
                    self._wait(job, standing)
            elif standing == "leaf-only" and self._reclaim(job):
                continue
            else:
                over.append(job)
        return over

    def _refused(self, job: JobInfo) -> bool:
        """Turn down what can never start as asked, or not now: limits, interactive quota.

        True when the job is dealt with: it waits (with its reason), or — at its
        project's limit — it took the place of lower-ranked jobs of its project (rule 4).
        """
        state = self.state
        tree = state.tree
        leaf = tree[job.leaf]
        if leaf.is_department:
            self.waiting[job.id] = reasons.department_job(tree, leaf)
        elif job.problem:
            self.waiting[job.id] = job.problem
        elif job.pool_problem:
            self.waiting[job.id] = job.pool_problem
        else:
            blocked = interactive_over_quota(state, job)
            if blocked is not None:
                self.waiting[job.id] = reasons.interactive_quota(
                    tree[blocked], state.interactive[blocked]
                )
                return True
            blocked = over_limit(state, job)
            if blocked is not None:
                # At its limit, a project may still swap a job for a better one.
                if not self._by_priority(job):
                    self.waiting[job.id] = reasons.limit_reached(tree[blocked])
                return True
            return False
        return True

    def _start_free(self, job: JobInfo) -> bool:
        placements = find_free(self.state.cluster, job)
        if placements is None:
            return False
        self.state.bind(job, placements)
        return True

    # ------------------------------------------------------------------ reclaim (rule 3)

    def _reclaim(self, job: JobInfo) -> bool:
        if job.amount <= EPS:
            return False  # a job without GPUs waits for CPUs; it preempts nobody
        state = self.state
        modes: tuple[Mode, ...] = ("share", "quota") if within_quota(state, job) else ("share",)
        for mode in modes:
            tops, gate, line = reclaim_line(state, self.order, job, mode)
            if not tops:
                continue
            key = (mode, tops, *_shape_key(job))
            if self._known_to_fail(key, job):
                continue
            relief = find_relief(state, job, line, gate)
            if relief is None:
                self._remember_failure(key, job)
                continue
            if asker_stays_fair(state, job, relief.victims) and no_way_back(
                state, job, relief.victims
            ):
                leaf = state.tree[job.leaf]
                what = "quota" if state.allocated[job.leaf] < leaf.quota - EPS else "fair share"
                if self._apply(job, relief, f"reclaim: {leaf.name} is below its {what}"):
                    return True
        return False

    def _known_to_fail(self, key: tuple[object, ...], job: JobInfo) -> bool:
        """A search as big or smaller failed since the last change that could help it.

        Within a cycle the victims only become fewer; what could help a failed search is
        a new victim (a project went over its share or quota) or devices a preemption
        left free beyond what its asker took, and both bump ``state.epoch``.
        """
        known = self.failed.get(key)
        return known is not None and known[0] == self.state.epoch and _need(job) >= known[1]

    def _remember_failure(self, key: tuple[object, ...], job: JobInfo) -> None:
        known = self.failed.get(key)
        need = _need(job)
        if known is not None and known[0] == self.state.epoch:
            need = min(need, known[1])
        self.failed[key] = (self.state.epoch, need)

    # ------------------------------------------------------------------ priority (rule 4)

    def _by_priority(self, job: JobInfo) -> bool:
        state = self.state
        if job.amount <= EPS:
            return False
        if not any(outranks(job, v) for v in state.victims[job.leaf][:1]):
            return False  # its project's least job is not below it: nobody is
        must_free = swap_must_free(state, job)
        key = ("priority", job.leaf, job.priority, job.interactive, *_shape_key(job))
        if must_free > 0:
            key += (round(must_free, 6),)
        if self._known_to_fail(key, job):
            return False
        line = priority_line(state, job)
        relief = find_relief(state, job, line, gate=None, min_freed=must_free)
        if relief is None:
            self._remember_failure(key, job)
            return False
        name = state.tree[job.leaf].name
        who = (
            "an interactive job"
            if job.interactive and all(v.priority == job.priority for v in relief.victims)
            else "a higher-priority job"
        )
        return self._apply(job, relief, f"priority: {who} of {name}")

    def _apply(self, job: JobInfo, relief: Relief, reason: str) -> bool:
        state = self.state
        for victim in relief.victims:
            state.preempt(victim, job, reason)
        placements = find_free(state.cluster, job, node=relief.node, pool=relief.pool)
        if placements is None:  # the fit checks and placement disagree: keep everyone
            state.undo_preemptions(relief.victims)
            return False
        state.bind(job, placements)
        if leaves_free(job, relief.victims):
            # The victims freed more than the job took: what is left is free now, and
            # searches that failed before may succeed.
            state.epoch += 1
        return True

    # ------------------------------------------------------------------ phase B

    def _over_share(self, jobs: list[JobInfo]) -> None:
        """Train jobs over their project's share: idle devices, or their own project's."""
        for job in self._turns(jobs):
            if self._refused(job):
                continue
            if not (self._start_free(job) or self._by_priority(job)):
                self._wait(job, standing_of(self.state, job))

    # ------------------------------------------------------------------ reasons

    def _wait(self, job: JobInfo, standing: Standing) -> None:
        self.waiting[job.id] = self._why(job, standing)

    def _why(self, job: JobInfo, standing: Standing) -> str:
        """The reason for a job left waiting; the same words for the same situation are
        built once (thousands of jobs wait for the same few reasons)."""
        state = self.state
        path = state.tree[job.leaf].path
        culprit = -1
        if standing != "within":
            culprit = next(
                (i for i in path if state.allocated[i] + job.amount > state.fair[i] + EPS),
                path[0],
            )
        key = (standing, culprit, state.changes, job.amount, *_shape_key(job), job.gpus)
        key += (job.fraction, job.memory)
        text = self.said.get(key)
        if text is None:
            text = self.said[key] = self._explain(job, culprit)
        return text

    def _explain(self, job: JobInfo, culprit: int) -> str:
        state = self.state
        cluster = state.cluster
        never = reasons.never_fits(cluster, job)
        if never is not None:
            return never
        if culprit < 0:
            return reasons.no_room(cluster, job)
        node = state.tree[culprit]
        text = reasons.fair_share(node, state.allocated[culprit], state.fair[culprit], job.amount)
        if any(cluster.pools[p].largest_free() for p in job.pools):
            text += f"; the idle GPUs do not fit it: {reasons.no_room(cluster, job)}"
        return text

    def _report(self) -> None:
        state = self.state
        decisions = state.decisions
        waiting = [0] * len(state.tree)
        for job in state.pending:
            if not job.bound_now:
                decisions.reasons[job.id] = self.waiting.get(job.id, "waiting for the next cycle")
                for i in state.tree[job.leaf].path:
                    waiting[i] += 1
        for job in state.running:
            if job.gone:  # preempted jobs wait again as soon as they have stopped
                for i in state.tree[job.leaf].path:
                    waiting[i] += 1
        for node in state.tree.nodes:
            decisions.projects[node.name] = ProjectShare(
                quota=node.quota,
                fair_share=state.fair[node.idx],
                allocated=state.allocated[node.idx],
                pending=waiting[node.idx],
            )


def _shape_key(job: JobInfo) -> tuple[object, ...]:
    """What, besides its size, decides where a job can go."""
    return (job.pools, job.shape, job.workers, job.profile, job.cpus, job.host_memory)


def _need(job: JobInfo) -> float:
    """How big a request is within its kind: failed searches for less imply failure for more."""
    if job.shape == "whole":
        return float(job.gpus)
    if job.shape == "memory":
        return float(job.memory)
    if job.shape == "fraction":
        return job.fraction
    return 1.0
