"""Placement (rule 6): the free-device index, best fit, gangs, sharing, MIG, bookkeeping."""

from __future__ import annotations

from sched_factories import GIB, job, node, snapshot

from corral.scheduler.cluster import ClusterState
from corral.scheduler.jobs import JobInfo
from corral.scheduler.model import JobView, Placement, Snapshot
from corral.scheduler.place import find_free, occupy, vacate
from corral.scheduler.projects import build_tree


def _cluster(snap: Snapshot) -> tuple[ClusterState, dict[int, JobInfo]]:
    cluster = ClusterState(snap)
    tree = build_tree((), [j.project for j in (*snap.running, *snap.pending)])
    infos = {}
    for view in (*snap.running, *snap.pending):
        info = JobInfo(view, tree[tree.by_name[view.project]], cluster, {})
        if view.placements:
            info.placements = occupy(cluster, info, view.placements)
        infos[view.id] = info
    return cluster, infos


def _place(snap: Snapshot, pending: JobView) -> tuple[Placement, ...] | None:
    cluster, infos = _cluster(snap)
    return find_free(cluster, infos[pending.id])


def test_buckets_follow_free_gpus() -> None:
    snap = snapshot([node("a", 4), node("b", 4)], [job("p", 3, on="a", ids=(0, 1, 2))])
    cluster, _ = _cluster(snap)
    pool = cluster.pools[0]
    assert pool.buckets == [[], [0], [], [], [1]]
    assert pool.largest_free() == 4
    assert pool.best_fit(1) == 0 and pool.best_fit(2) == 1 and pool.best_fit(5) is None
    assert pool.worker_slots(2) == 2


def test_best_fit_and_lowest_gpus() -> None:
    small = job("p", 2)
    snap = snapshot([node("a", 8), node("b", 8)], [job("p", 5, on="b", ids=range(5)), small])
    assert _place(snap, small) == (Placement("b", (5, 6)),)


def test_unschedulable_nodes_and_unmanaged_gpus_get_nothing() -> None:
    one = job("p", 1)
    snap = snapshot([node("down", 8, ready=False), node("a", 2, unmanaged=(0,))], [one])
    assert _place(snap, one) == (Placement("a", (1,)),)
    two = job("p", 2)
    assert _place(snapshot([node("a", 2, unmanaged=(0,))], [two]), two) is None


def test_gang_packs_workers_in_one_pool() -> None:
    gang = job("p", 4, workers=3)
    nodes = [node("x0", 8, pool="x"), node("y0", 4, pool="y"), node("y1", 8, pool="y")]
    placed = _place(snapshot(nodes, [gang]), gang)
    assert placed is not None
    assert [p.node for p in placed] == ["y0", "y1", "y1"]  # fullest nodes first
    assert [p.gpu_ids for p in placed] == [(0, 1, 2, 3), (0, 1, 2, 3), (4, 5, 6, 7)]


def test_gang_does_not_start_partially() -> None:
    gang = job("p", 8, workers=2)
    assert _place(snapshot([node("x", 8, pool="x"), node("y", 8, pool="y")], [gang]), gang) is None


def test_fractions_share_only_with_fractions_fullest_first() -> None:
    snap = snapshot(
        [node("a", 3)],
        [
            job("p", 0.5, on="a", ids=(0,)),
            job("p", 0.75, on="a", ids=(1,)),
            job("p", 1, on="a", ids=(2,)),
        ],
    )
    quarter = job("p", 0.25)
    half = job("p", 0.5)
    assert _place(snapshot(snap.nodes, [*snap.running, quarter]), quarter) == (
        Placement("a", (1,)),  # GPU 1 has 0.25 left: the fullest that fits
    )
    assert _place(snapshot(snap.nodes, [*snap.running, half]), half) == (Placement("a", (0,)),)
    whole = job("p", 1)
    assert _place(snapshot(snap.nodes, [*snap.running, whole]), whole) is None


def test_memory_requests_need_that_many_bytes() -> None:
    nodes = [node("small", 1, memory_gib=40), node("big", 1, memory_gib=80)]
    want = job("p", 0, gpu_memory_bytes=60 * GIB)
    assert _place(snapshot(nodes, [want]), want) == (Placement("big", (0,)),)
    huge = job("p", 0, gpu_memory_bytes=100 * GIB)
    assert _place(snapshot(nodes, [huge]), huge) is None


def test_mig_jobs_get_slices_of_their_profile_only() -> None:
    nodes = [node("a", 2, mig={0: [("1g.10gb", 7)]})]
    mig = job("p", 0, mig_profile="1g.10gb")
    assert _place(snapshot(nodes, [mig]), mig) == (Placement("a", (0,), mig_slice="0:1g.10gb:0"),)
    other = job("p", 0, mig_profile="3g.40gb")
    assert _place(snapshot(nodes, [other]), other) is None
    two = job("p", 2)  # GPU 0 is MIG-partitioned: never handed out whole
    assert _place(snapshot(nodes, [two]), two) is None


def test_cpu_requests_pick_a_node_with_room() -> None:
    nodes = [node("lean", 8, cpus=8), node("fat", 8, cpus=64)]
    wide = job("p", 1, cpus=32.0)
    assert _place(snapshot(nodes, [wide]), wide) == (Placement("fat", (0,)),)


def test_occupy_and_vacate_are_inverse() -> None:
    nodes = [node("a", 4, mig={3: [("1g.10gb", 7)]})]
    views = [
        job("p", 2, on="a", ids=(0, 1)),
        job("p", 0.5, on="a", ids=(2,)),
        job("p", 0, mig_profile="1g.10gb", on="a", ids=(3,)),  # no slice id: resolved
    ]
    cluster, infos = _cluster(snapshot(nodes, views))
    state = cluster.nodes[0]
    assert state.free == [] and state.shared_free == {2: 40 * GIB}
    assert infos[views[2].id].placements[0].mig_slice == "3:1g.10gb:0"
    for info in infos.values():
        vacate(cluster, info)
    assert state.free == [0, 1, 2] and not state.shared_free
    assert len(state.mig_free["1g.10gb"]) == 7
    assert cluster.pools[0].buckets[3] == [0]
