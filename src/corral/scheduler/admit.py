"""Admission (rule 2) and the conditions on swaps (rules 3-5), as pure checks.

Each function looks at a cycle's numbers (`CycleState`: allocated, fair shares, quotas,
limits along a project's path of departments) and one job; none changes anything.
Amounts in GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from corral.scheduler.jobs import JobInfo
from corral.scheduler.state import CycleState
from corral.scheduler.units import EPS

Standing = Literal["within", "leaf-only", "over"]
"""Where a job would take its project: within its share at every level; within the
project's own share but over a department's; or over the project's own share."""


def standing_of(state: CycleState, job: JobInfo) -> Standing:
    """Where starting ``job`` would take its project and departments, against shares."""
    path = state.tree[job.leaf].path
    if state.allocated[job.leaf] + job.amount > state.fair[job.leaf] + EPS:
        return "over"
    for i in path[1:]:
        if state.allocated[i] + job.amount > state.fair[i] + EPS:
            return "leaf-only"
    return "within"


def within_quota(state: CycleState, job: JobInfo) -> bool:
    """Would the job keep its project within quota (and share) at every level?

    Such an asker may also reclaim from projects above their quota (rule 3).
    """
    return all(
        state.allocated[i] + job.amount <= min(state.quota[i], state.fair[i]) + EPS
        for i in state.tree[job.leaf].path
    )


def interactive_over_quota(state: CycleState, job: JobInfo) -> int | None:
    """The project or department whose quota an interactive job would exceed, or None.

    Only interactive GPUs count: train jobs over quota are preemptible and do not block.
    """
    if not job.interactive:
        return None
    for i in state.tree[job.leaf].path:
        if state.interactive[i] + job.amount > state.quota[i] + EPS:
            return i
    return None


def over_limit(state: CycleState, job: JobInfo) -> int | None:
    """The project or department whose hard limit the job would exceed, or None."""
    for i in state.tree[job.leaf].path:
        limit = state.limit[i]
        if limit is not None and state.allocated[i] + job.amount > limit + EPS:
            return i
    return None


def swap_must_free(state: CycleState, job: JobInfo) -> float:
    """GPUs a priority swap (rule 4) must take from the job's own project.

    The project may swap jobs but never grow past its share (or what it holds, if more)
    or past a limit by doing so.
    """
    must = 0.0
    for i in state.tree[job.leaf].path:
        bound = max(state.fair[i], state.allocated[i])
        limit = state.limit[i]
        if limit is not None:
            bound = min(bound, limit)
        must = max(must, state.allocated[i] + job.amount - bound)
    return must


def asker_stays_fair(state: CycleState, job: JobInfo, victims: Sequence[JobInfo]) -> bool:
    """After a reclaim, the asker's project is within its share, and no department of its
    path grew over its share (taking from a sibling inside it is fine)."""
    tree = state.tree
    for i in tree[job.leaf].path:
        freed = sum(v.amount for v in victims if i in tree[v.leaf].path)
        after = state.allocated[i] + job.amount - freed
        bound = state.fair[i] if i == job.leaf else max(state.fair[i], state.allocated[i])
        if after > bound + EPS:
            return False
    return True


def no_way_back(state: CycleState, job: JobInfo, victims: Sequence[JobInfo]) -> bool:
    """No victim could reclaim its GPUs back from ``job`` in the next cycle (rule 5).

    A victim whose project would be left below its quota (with the victim's own GPUs
    counted back in) may reclaim from any project above its quota; so when the asker
    ends above its own quota, such a victim is not taken. Example: a job reclaimed by a
    project below its quota, on a node whose other GPUs its project then borrowed, must
    not be preempted by the project that wants the whole node back — it would reclaim
    the node again at once (tests/scenarios/no-ping-pong-quota-guarantee.yaml).
    """
    tree = state.tree
    if within_quota(state, job):
        return True  # the asker stays within its quota: nobody can reclaim from it
    taken: dict[int, float] = {}
    for victim in victims:
        for i in tree[victim.leaf].path:
            taken[i] = taken.get(i, 0.0) + victim.amount
    for victim in victims:
        if all(
            state.allocated[i] - taken[i] + victim.amount
            <= min(state.quota[i], state.fair[i]) + EPS
            for i in tree[victim.leaf].path
        ):
            return False
    return True
