"""Accounting units (rule 7) and the project tree (departments, pools, implicit projects)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sched_factories import GIB, job, node, project, snapshot

from corral.scheduler.cluster import ClusterState
from corral.scheduler.jobs import JobInfo
from corral.scheduler.model import NodeView
from corral.scheduler.projects import build_tree
from corral.scheduler.units import fmt_gib, fmt_gpus, gpus_phrase, mig_profile_slices


@pytest.mark.parametrize(
    ("profile", "slices"),
    [("1g.10gb", 1), ("3g.40gb", 3), ("7g.80gb", 7), ("1g.10gb+me", 1), ("8g.1gb", None)],
)
def test_mig_profile_slices(profile: str, slices: int | None) -> None:
    assert mig_profile_slices(profile) == slices


def test_numbers_for_people() -> None:
    assert [fmt_gpus(x) for x in (4.0, 0.5, 2 / 7, 3.9999999)] == ["4", "0.5", "0.29", "4"]
    assert [gpus_phrase(x) for x in (1, 0.5, 2)] == ["1 GPU", "0.5 GPU", "2 GPUs"]
    assert fmt_gib(80 * GIB) == "80 GiB"
    assert fmt_gib(12.5 * GIB) == "12.5 GiB"


def _info(view_kw: dict[str, object], nodes: Sequence[NodeView] | None = None) -> JobInfo:
    view = job("p", **view_kw)  # type: ignore[arg-type]
    snap = snapshot(nodes or [node("n0", 2), node("n1", 2, memory_gib=40)], [view])
    cluster = ClusterState(snap)
    tree = build_tree((), ["p"])
    return JobInfo(view, tree[0], cluster, {})


@pytest.mark.parametrize(
    ("kw", "shape", "amount"),
    [
        ({"gpus": 2}, "whole", 2),
        ({"gpus": 2, "workers": 3}, "whole", 6),
        ({"gpus": 0.5}, "fraction", 0.5),
        ({"gpus": 0, "gpu_memory_bytes": 20 * GIB}, "memory", 0.25),  # of the largest: 80
        ({"gpus": 0, "gpu_memory_bytes": 200 * GIB}, "memory", 1.0),
        ({"gpus": 0, "mig_profile": "3g.40gb"}, "mig", 3 / 7),
        ({"gpus": 0}, "host", 0),
        ({"gpus": 1.5}, "invalid", 0),
        ({"gpus": 0.5, "workers": 2}, "invalid", 0),
    ],
)
def test_accounting_amounts(kw: dict[str, object], shape: str, amount: float) -> None:
    info = _info(kw)
    assert info.shape == shape
    assert info.amount == pytest.approx(amount)


def test_memory_counts_against_the_largest_gpu_of_its_pools() -> None:
    nodes = [node("small", 2, memory_gib=40, pool="s"), node("big", 2, memory_gib=80)]
    assert _info({"gpus": 0, "gpu_memory_bytes": 20 * GIB, "pool": "s"}, nodes).amount == 0.5
    assert _info({"gpus": 0, "gpu_memory_bytes": 20 * GIB}, nodes).amount == 0.25


def test_tree_paths_pools_and_ranks() -> None:
    tree = build_tree(
        [
            project("dept", 8, order=0, pools=("a", "b"), priority=2),
            project("team", 4, order=1, parent="dept", pools=("b", "c")),
            project("solo", 2, order=2),
        ],
        ["team", "ghost"],
    )
    team = tree[tree.by_name["team"]]
    dept = tree[tree.by_name["dept"]]
    assert team.path == (team.idx, dept.idx)
    assert team.pools == frozenset({"b"})  # its own pools within its department's
    assert team.rank == (-2, 0)  # the department's priority compares first
    assert dept.is_department and not team.is_department
    ghost = tree[tree.by_name["ghost"]]
    assert ghost.implicit and ghost.quota == 0 and ghost.weight == 1
    assert tree.top == [dept.idx, tree.by_name["solo"], ghost.idx]


def test_bad_parents_are_dropped_not_fatal() -> None:
    tree = build_tree(
        [
            project("a", order=0, parent="b"),
            project("b", order=1, parent="a"),
            project("c", order=2, parent="nobody"),
        ],
        (),
    )
    parents = {n.name: n.parent for n in tree.nodes}
    assert parents["c"] == -1
    assert (parents["a"] == -1) != (parents["b"] == -1)  # the cycle is cut once
