"""Victims (rules 3 and 4): the line of candidates, the fair prefix, pruning, the gate."""

from __future__ import annotations

from dataclasses import replace

from sched_factories import job, node, project, projects, snapshot

from corral.scheduler.jobs import JobInfo
from corral.scheduler.model import JobView, Placement, Snapshot
from corral.scheduler.order import Order
from corral.scheduler.state import CycleState
from corral.scheduler.victims import find_relief, outranks, priority_line, reclaim_line


def _state(snap: Snapshot) -> tuple[CycleState, dict[str, JobInfo]]:
    state = CycleState(snap)
    return state, {j.name: j for j in (*state.running, *state.pending)}


def test_the_fair_prefix_is_pruned_to_what_is_needed() -> None:
    views = [
        job("x", 1, on="n0", ids=(0,), name="v1"),
        job("x", 1, on="n1", ids=(0,), name="v2"),
        job("x", 2, on="n1", ids=(1, 2), name="v3"),
        job("y", 2, name="asker"),
    ]
    state, jobs = _state(snapshot([node("n0", 1), node("n1", 3)], views, projects(("x", 0))))
    line = [jobs["v1"], jobs["v2"], jobs["v3"]]
    relief = find_relief(state, jobs["asker"], line, gate=None)
    assert relief is not None
    assert [v.name for v in relief.victims] == ["v3"]  # v2 was not needed after all
    assert relief.node == state.cluster.node_index["n1"]


def test_no_relief_when_the_line_cannot_make_room() -> None:
    views = [job("x", 1, on="n0", ids=(0,), name="v1"), job("y", 2, name="asker")]
    state, jobs = _state(snapshot([node("n0", 1)], views))
    assert find_relief(state, jobs["asker"], [jobs["v1"]], gate=None) is None


def test_a_gang_finds_room_across_nodes_of_one_pool() -> None:
    views = [
        job("x", 1, on="a0", ids=(0,), name="va"),
        job("x", 1, on="b0", ids=(0,), name="vb"),
        job("x", 1, on="a1", ids=(0,), name="vc"),
        job("y", 2, workers=2, name="gang"),
    ]
    nodes = [node("a0", 2, pool="a"), node("b0", 2, pool="b"), node("a1", 2, pool="a")]
    state, jobs = _state(snapshot(nodes, views))
    relief = find_relief(state, jobs["gang"], [jobs["va"], jobs["vb"], jobs["vc"]], gate=None)
    assert relief is not None
    assert [v.name for v in relief.victims] == ["va", "vc"]  # vb is in the other pool
    assert (relief.pool,) == state.cluster.pool_index["a"]  # pool a: one partition


def test_a_gang_victim_is_taken_whole() -> None:
    views = [
        job("x", 2, workers=2, on="n0", ids=(0, 1), name="gang-victim"),
        job("y", 1, name="asker"),
    ]
    # The victim's second worker runs on n1.
    views[0] = replace(views[0], placements=(Placement("n0", (0, 1)), Placement("n1", (0, 1))))
    state, jobs = _state(snapshot([node("n0", 2), node("n1", 2)], views))
    relief = find_relief(state, jobs["asker"], [jobs["gang-victim"]], gate=None)
    assert relief is not None and [v.name for v in relief.victims] == ["gang-victim"]


def _reclaim_setup() -> tuple[CycleState, dict[str, JobInfo]]:
    views: list[JobView] = []
    for i in range(4):
        views.append(job("far", 1, on="n0", ids=(i,), name=f"far-{i}"))
    for i in range(4, 7):
        views.append(job("near", 1, on="n0", ids=(i,), name=f"near-{i}"))
    views.append(job("low", 1, on="n0", ids=(7,), name="low-7"))
    views.append(job("me", 1, name="asker"))
    snap = snapshot(
        [node("n0", 8)],
        views,
        [
            project("far", 1, order=0, weight=0),
            project("near", 2, order=1, weight=0),
            project("low", 0, order=2, weight=0, priority=-1),
            project("me", 4, order=3),
        ],
    )
    return _state(snap)


def test_reclaim_line_order_lower_priority_then_furthest_above_share() -> None:
    state, jobs = _reclaim_setup()
    tops, _, line = reclaim_line(state, Order(state), jobs["asker"], "share")
    assert [state.tree[t].name for t in tops] == ["low", "far", "near"]
    assert [v.name for v in line][:3] == ["low-7", "far-3", "far-2"]  # newest first


def test_the_gate_stops_at_the_share() -> None:
    state, jobs = _reclaim_setup()
    _, gate, _ = reclaim_line(state, Order(state), jobs["asker"], "share")
    scope = 0
    far = [jobs[f"far-{i}"] for i in (3, 2, 1, 0)]
    admitted = []
    for victim in far:
        if gate.admits(victim, scope):
            gate.take(victim, scope)
            admitted.append(victim.name)
    assert admitted == ["far-3", "far-2", "far-1"]  # far's share is 1: the last one stays


def test_quota_mode_also_takes_from_projects_above_quota() -> None:
    views = [job("v", 1, on="n0", ids=(i,), name=f"v-{i}") for i in range(2)]
    views += [job("v", 1, name="v-waiting"), job("me", 1, name="asker")]
    snap = snapshot(
        [node("n0", 3)],
        views,
        [project("v", 1, order=0, weight=1), project("me", 1, order=1, weight=0)],
    )
    state, jobs = _state(snap)
    # v's share is 2 (its quota and the spare GPU) and it holds 2: within its share but
    # above its quota, so only quota mode sees it.
    assert state.fair[state.tree.by_name["v"]] == 2
    share_tops, _, _ = reclaim_line(state, Order(state), jobs["asker"], "share")
    quota_tops, _, _ = reclaim_line(state, Order(state), jobs["asker"], "quota")
    assert share_tops == () and [state.tree[t].name for t in quota_tops] == ["v"]


def test_priority_inside_a_project() -> None:
    views = [
        job("a", 1, on="n0", ids=(0,), name="p0-old", priority=0),
        job("a", 1, on="n0", ids=(1,), name="p5", priority=5),
        job("a", 1, on="n0", ids=(2,), name="p0-new", priority=0),
        job("a", 1, name="urgent", priority=5),
        job("a", 1, name="notebook", kind="interactive"),
    ]
    state, jobs = _state(snapshot([node("n0", 3)], views, projects(("a", 3))))
    assert [v.name for v in priority_line(state, jobs["urgent"])] == ["p0-new", "p0-old"]
    assert [v.name for v in priority_line(state, jobs["notebook"])] == ["p0-new", "p0-old"]
    assert outranks(jobs["notebook"], jobs["p0-old"])
    assert not outranks(jobs["notebook"], jobs["p5"])
    assert not outranks(jobs["p0-new"], jobs["p0-old"])
