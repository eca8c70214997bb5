"""The first placement policy: oldest first, skip what does not fit, best fit."""

from __future__ import annotations

from corral.scheduler import DeviceView, FifoPolicy, JobView, NodeView, Placement, Snapshot


def node(name: str, gpus: int, *, ready: bool = True, busy: tuple[int, ...] = ()) -> NodeView:
    devices = tuple(
        DeviceView(i, f"GPU-{name}-{i}", 80 << 30, busy_unmanaged=i in busy) for i in range(gpus)
    )
    return NodeView(
        name=name, schedulable=ready, devices=devices, cpu_cores=64, memory_bytes=512 << 30
    )


def job(i: int, gpus: int, **kw: object) -> JobView:
    return JobView(id=i, name=f"j{i}", project="p", order=i, gpus=gpus, **kw)  # type: ignore[arg-type]


def test_oldest_first_and_a_big_job_does_not_block_small_ones() -> None:
    snap = Snapshot(nodes=(node("a", 4),), running=(), pending=(job(2, 1), job(1, 8), job(3, 2)))
    d = FifoPolicy().schedule(snap)
    assert [(b.job_id, b.gpu_ids) for b in d.bindings] == [(2, (0,)), (3, (1, 2))]
    assert "waiting for 8 free GPUs on one node" in d.reasons[1]


def test_running_jobs_keep_their_gpus() -> None:
    running = (job(1, 2, placements=(Placement("a", (0, 2)),)),)
    d = FifoPolicy().schedule(
        Snapshot(nodes=(node("a", 4),), running=running, pending=(job(2, 2),))
    )
    assert d.bindings[0].gpu_ids == (1, 3)


def test_best_fit_prefers_the_fullest_node_that_fits() -> None:
    running = (job(1, 6, placements=(Placement("b", (0, 1, 2, 3, 4, 5)),)),)
    d = FifoPolicy().schedule(
        Snapshot(nodes=(node("a", 8), node("b", 8)), running=running, pending=(job(2, 2),))
    )
    assert d.bindings[0].node == "b"


def test_unready_nodes_and_unmanaged_gpus_are_not_used() -> None:
    nodes = (node("down", 8, ready=False), node("a", 2, busy=(0,)))
    d = FifoPolicy().schedule(Snapshot(nodes=nodes, running=(), pending=(job(1, 1), job(2, 1))))
    assert [(b.node, b.gpu_ids) for b in d.bindings] == [("a", (1,))]
    assert "all 2 GPUs of ready nodes are in use" in d.reasons[2]


def test_reasons_without_nodes() -> None:
    d = FifoPolicy().schedule(Snapshot(nodes=(), running=(), pending=(job(1, 1),)))
    assert d.reasons[1] == "no nodes have joined the cluster yet"
    d = FifoPolicy().schedule(
        Snapshot(nodes=(node("x", 8, ready=False),), running=(), pending=(job(1, 1),))
    )
    assert "no node is ready" in d.reasons[1]


def test_cpu_only_jobs_need_cpu_room() -> None:
    d = FifoPolicy().schedule(
        Snapshot(
            nodes=(node("a", 0),), running=(), pending=(job(1, 0, cpus=48.0), job(2, 0, cpus=48.0))
        )
    )
    assert [b.job_id for b in d.bindings] == [1]
    assert "48 free CPU cores" in d.reasons[2]


def test_never_binds_a_gpu_twice_in_one_cycle() -> None:
    pending = tuple(job(i, 1 + i % 3) for i in range(1, 30))
    d = FifoPolicy().schedule(
        Snapshot(nodes=(node("a", 8), node("b", 8)), running=(), pending=pending)
    )
    taken = [(b.node, g) for b in d.bindings for g in b.gpu_ids]
    assert len(taken) == len(set(taken)) == 16


def test_jobs_fifo_cannot_place_wait_and_say_so() -> None:
    pending = (
        job(1, 0, workers=2),
        JobView(id=2, name="f", project="p", order=2, gpus=0.5),
        JobView(id=3, name="m", project="p", order=3, mig_profile="1g.10gb"),
    )
    d = FifoPolicy().schedule(Snapshot(nodes=(node("a", 8),), running=(), pending=pending))
    assert d.bindings == []
    assert set(d.reasons) == {1, 2, 3}
    assert all("only single-worker jobs of whole GPUs" in r for r in d.reasons.values())
