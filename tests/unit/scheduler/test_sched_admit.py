"""Admission checks (rule 2) and the conditions on swaps (rules 3-5)."""

from __future__ import annotations

from sched_factories import job, node, project, snapshot

from corral.scheduler.admit import (
    asker_stays_fair,
    interactive_over_quota,
    no_way_back,
    over_limit,
    standing_of,
    swap_must_free,
    within_quota,
)
from corral.scheduler.jobs import JobInfo
from corral.scheduler.model import JobView, ProjectView
from corral.scheduler.state import CycleState


def _state(
    views: list[JobView], projects: list[ProjectView]
) -> tuple[CycleState, dict[str, JobInfo]]:
    state = CycleState(snapshot([node("n0", 8)], views, projects))
    return state, {j.name: j for j in (*state.running, *state.pending)}


def test_standing_at_every_level_of_departments() -> None:
    views = [
        *(job("b", 1, on="n0", ids=(i,)) for i in range(5)),
        job("a", 1, name="a-one"),
        job("a", 4, name="a-four"),
        job("c", 1, name="c-one"),
        job("c", 3),
    ]
    projects = [
        project("dept", 4, order=0),
        project("a", 2, order=1, parent="dept", weight=0),
        project("b", 2, order=2, parent="dept", weight=0),
        project("c", 4, order=3),
    ]
    state, jobs = _state(views, projects)
    # Quotas take the whole cluster (dept 4, c 4): dept's share is 4 and b holds 5.
    assert standing_of(state, jobs["a-one"]) == "leaf-only"  # a ok, dept over
    assert standing_of(state, jobs["a-four"]) == "over"  # a's share is 2
    assert standing_of(state, jobs["c-one"]) == "within"


def test_interactive_quota_counts_interactive_gpus_only() -> None:
    views = [
        job("a", 2, on="n0", ids=(0, 1)),  # train, over nothing: does not block
        job("a", 1, on="n0", ids=(2,), kind="interactive"),
        job("a", 1, kind="interactive", name="nb"),
        job("a", 1, kind="interactive", name="nb-2", priority=1),
        job("a", 1, name="train"),
    ]
    state, jobs = _state(views, [project("a", 2)])
    assert interactive_over_quota(state, jobs["nb"]) is None  # 1 + 1 ≤ 2
    assert interactive_over_quota(state, jobs["train"]) is None
    state.interactive[0] = 2.0
    assert interactive_over_quota(state, jobs["nb-2"]) == 0


def test_limits_along_the_path() -> None:
    views = [job("a", 3, on="n0", ids=(0, 1, 2)), job("a", 1, name="more")]
    projects = [project("d", 4, order=0, limit=3), project("a", 4, order=1, parent="d")]
    state, jobs = _state(views, projects)
    assert state.tree[over_limit(state, jobs["more"]) or 0].name == "d"
    assert not within_quota(state, jobs["more"])  # the limit caps d's share at 3 too


def test_a_swap_must_free_what_takes_the_project_past_share_or_limit() -> None:
    views = [*(job("a", 1, on="n0", ids=(i,)) for i in range(4)), job("a", 2, name="urgent")]
    state, jobs = _state(views, [project("a", 4, limit=5)])
    # Its share is 5 (demand 6 capped by the limit) and it holds 4: 2 more would take it
    # 1 past both, so a swap must give up at least 1.
    assert swap_must_free(state, jobs["urgent"]) == 1


def test_reclaim_conditions() -> None:
    views = [
        job("v", 1, on="n0", ids=(0,), name="v-1"),
        job("v", 1, on="n0", ids=(1,), name="v-2"),
        job("r", 2, name="asker"),
    ]
    state, jobs = _state(views, [project("v", 1, order=0), project("r", 1, order=1)])
    asker, v1, v2 = jobs["asker"], jobs["v-1"], jobs["v-2"]
    assert state.fair == [2, 2]  # quota 1 each, the rest by equal weights
    assert asker_stays_fair(state, asker, [v1, v2])
    state.allocated[1] = 1.0  # r holding 1 already: 1 + 2 would be over its share
    assert not asker_stays_fair(state, asker, [v1, v2])
    state.allocated[1] = 0.0
    # r ends above its quota of 1; taking both of v's jobs leaves v at 0, and either job
    # would fit back within v's quota: that would reclaim straight back.
    assert not no_way_back(state, asker, [v1, v2])
    assert no_way_back(state, asker, [v2])  # v keeps 1 = its quota
