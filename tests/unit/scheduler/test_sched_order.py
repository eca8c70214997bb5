"""Order: who is served next (most deprived first) and who yields first (furthest above)."""

from __future__ import annotations

from sched_factories import job, node, project, snapshot

from corral.scheduler.model import JobView, SchedulerConfig, Snapshot
from corral.scheduler.order import Order, usage_factors
from corral.scheduler.projects import build_tree
from corral.scheduler.state import CycleState


def _order(snap: Snapshot) -> tuple[CycleState, Order]:
    state = CycleState(snap)
    return state, Order(state)


def _running(name: str, n: int, node_name: str, first: int) -> list[JobView]:
    return [job(name, 1, on=node_name, ids=(first + i,)) for i in range(n)]


def test_served_by_priority_then_furthest_below_share_then_age() -> None:
    snap = snapshot(
        [node("n0", 8)],
        [
            *_running("half", 2, "n0", 0),
            *_running("quarter", 1, "n0", 2),
            *_running("urgent", 3, "n0", 3),
            job("half"),
            job("quarter"),
            job("urgent"),
            job("young"),
        ],
        [
            project("half", 4, order=0, weight=0),
            project("quarter", 4, order=1, weight=0),
            project("urgent", 0, order=2, weight=0, priority=1),
            project("young", 0, order=3, weight=0),
        ],
    )
    state, order = _order(snap)
    names = sorted(
        (n.name for n in state.tree.nodes), key=lambda n: order.serve_key(state.tree.by_name[n])
    )
    # Shares: half 3, quarter 2, urgent 0, young 0 (weights 0). urgent first (queue
    # priority); young holds nothing of no share (ratio 0); quarter holds 1 of 2 (0.5)
    # before half, 2 of 3 (0.67).
    assert names == ["urgent", "young", "quarter", "half"]


def test_yield_order_lowest_priority_then_furthest_above() -> None:
    snap = snapshot(
        [node("n0", 8)],
        [
            *_running("far", 4, "n0", 0),
            *_running("near", 3, "n0", 4),
            *_running("vip", 1, "n0", 7),
            job("asker", 8),
        ],
        [
            project("far", 1, order=0, weight=0),
            project("near", 2, order=1, weight=0),
            project("vip", 0, order=2, weight=0, priority=-1),
            project("asker", 4, order=3, weight=0),
        ],
    )
    state, order = _order(snap)
    idx = state.tree.by_name
    ranked = sorted(("far", "near", "vip"), key=lambda n: order.yield_key(idx[n]))
    assert ranked == ["vip", "far", "near"]  # vip's queue priority is lowest


def test_usage_factor_is_usage_per_gpu_of_share() -> None:
    tree = build_tree(
        [project("d", 0, order=0), project("a", 0, order=1, parent="d"), project("b", order=2)],
        (),
    )
    fair = [4.0, 4.0, 0.0]
    factors = usage_factors(tree, {"a": 400.0, "b": 10.0}, fair, enabled=True)
    assert factors == [100.0, 100.0, 10.0]  # d = its subtree; b's share counts as 1 GPU
    assert usage_factors(tree, {"a": 400.0}, fair, enabled=False) == [0.0, 0.0, 0.0]


def test_usage_only_breaks_ties() -> None:
    def key_order(usage: dict[str, float]) -> list[str]:
        snap = snapshot(
            [node("n0", 4)],
            [*_running("x", 2, "n0", 0), *_running("y", 1, "n0", 2), job("x"), job("y")],
            [project("x", 2, order=0), project("y", 2, order=1)],
            usage=usage,
            config=SchedulerConfig(usage_half_life=3600.0),
        )
        state, order = _order(snap)
        return sorted(("x", "y"), key=lambda n: order.serve_key(state.tree.by_name[n]))

    # y holds 1 of its 2, x 2 of 2: y is served first however much it used.
    assert key_order({"y": 1e9}) == ["y", "x"]
