"""Fractional, GPU-memory and MIG jobs, and gangs, through the server.

The policy's choices are tested in tests/unit/scheduler; here the server's side is: the
bindings it records (the database refuses a device that is taken), what each node is
told to run, and how a gang's workers' reports make up the job's state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from api.conftest import Harness, gpu_list
from corral.scheduler import Binding, Decisions, Placement, Preemption, Snapshot
from corral.server.loops.cycles import SchedulerLoop
from corral.store.models import GpuAllocation, GpuShare

GiB = 1024**3


class Scripted:
    def __init__(self, decide: Callable[[Snapshot], Decisions]) -> None:
        self.decide = decide

    def schedule(self, snapshot: Snapshot) -> Decisions:
        return self.decide(snapshot)


def allocations(server: Harness) -> list[tuple[int, int | None]]:
    with server.ctx.db.read() as s:
        return [
            (a.gpu_index, a.job_id)
            for a in s.scalars(select(GpuAllocation).order_by(GpuAllocation.gpu_index))
        ]


def shares(server: Harness) -> list[tuple[int, int, int, str | None]]:
    with server.ctx.db.read() as s:
        return [
            (r.job_id, r.gpu_index, r.memory_bytes, r.mig_uuid)
            for r in s.scalars(select(GpuShare).order_by(GpuShare.job_id))
        ]


def assignments(server: Harness, token: str) -> dict[tuple[str, int], Any]:
    return {(a["name"], a["rank"]): a for a in server.sync(token)["assignments"]}


def report(job: Any, state: str, rank: int = 0, **fields: Any) -> dict[str, Any]:
    return {"job_id": job["id"], "attempt": job["attempt"], "rank": rank, "state": state, **fields}


# ---------------------------------------------------------------- fractions and memory


def test_two_half_gpu_jobs_share_one_gpu_and_free_it_together(server: Harness) -> None:
    node = server.register("n1", gpus=2)
    assert server.submit("half-a", gpus=0.5).status_code == 201
    assert server.submit("half-b", gpus=0.5).status_code == 201
    assert server.submit("whole", gpus=1).status_code == 201
    server.cycle()

    a, b, whole = server.job("half-a"), server.job("half-b"), server.job("whole")
    assert a["state"] == b["state"] == whole["state"] == "bound"
    assert a["gpu_ids"] == b["gpu_ids"]  # packed onto one GPU
    assert whole["gpu_ids"] != a["gpu_ids"]
    assert "shared (0.5 of it: 40.0 GiB)" in a["events"][-1]["message"]
    shared_gpu = a["gpu_ids"][0]
    assert allocations(server) == sorted([(shared_gpu, None), (whole["gpu_ids"][0], whole["id"])])
    assert [(j, g, m) for j, g, m, _ in shares(server)] == [
        (a["id"], shared_gpu, 40 * GiB),
        (b["id"], shared_gpu, 40 * GiB),
    ]

    desired = assignments(server, node)
    assert desired[("half-a", 0)]["gpu_fraction"] == 0.5
    assert desired[("half-a", 0)]["gpu_memory_bytes"] == 40 * GiB
    assert desired[("half-a", 0)]["gpu_uuids"] == [f"GPU-n1-{shared_gpu}"]
    assert desired[("whole", 0)]["gpu_fraction"] is None
    assert desired[("whole", 0)]["gpu_memory_bytes"] is None

    # One sharer ends: the GPU stays shared by the other. Both end: it is free again.
    server.sync(node, [report(a, "exited", exit_code=0)])
    assert (shared_gpu, None) in allocations(server)
    server.sync(node, [report(b, "exited", exit_code=0)])
    assert (shared_gpu, None) not in allocations(server)
    assert shares(server) == []


def test_a_gpu_memory_job_gets_exactly_its_memory(server: Harness) -> None:
    node = server.register("n1", gpus=1)
    assert server.submit("mem", gpu_memory_bytes=20 * GiB).status_code == 201
    server.cycle()
    job = server.job("mem")
    assert job["state"] == "bound" and job["gpu_memory_bytes"] == 20 * GiB
    desired = assignments(server, node)[("mem", 0)]
    assert desired["gpu_memory_bytes"] == 20 * GiB and desired["gpu_fraction"] is None
    assert [m for _, _, m, _ in shares(server)] == [20 * GiB]


def test_the_store_refuses_a_whole_gpu_that_is_shared_and_a_share_over_memory(
    server: Harness,
) -> None:
    server.register("n1", gpus=1)
    server.submit("big-share", gpus=0.75)
    server.submit("whole", gpus=1)
    server.submit("too-much", gpus=0.5)
    server.cycle()  # the real policy shares GPU 0 with big-share
    ids = {n: server.job(n)["id"] for n in ("big-share", "whole", "too-much")}
    assert server.job("big-share")["state"] == "bound"

    # A buggy policy: GPU 0 whole to one job, and a share that does not fit in memory.
    bad = Scripted(
        lambda snap: Decisions(
            bindings=[
                Binding(ids["whole"], (Placement("n1", (0,)),)),
                Binding(ids["too-much"], (Placement("n1", (0,)),)),
            ]
        )
    )
    SchedulerLoop(server.ctx, bad).cycle()
    assert server.job("whole")["state"] == "pending"
    assert server.job("too-much")["state"] == "pending"
    assert allocations(server) == [(0, None)]


def test_a_whole_gpu_job_keeps_its_gpu_from_shares(server: Harness) -> None:
    server.register("n1", gpus=1)
    server.submit("whole", gpus=1)
    server.cycle()
    server.submit("half", gpus=0.5)
    half_id = server.job("half")["id"]
    bad = Scripted(lambda snap: Decisions(bindings=[Binding(half_id, (Placement("n1", (0,)),))]))
    SchedulerLoop(server.ctx, bad).cycle()
    assert server.job("half")["state"] == "pending"
    assert shares(server) == []


# ---------------------------------------------------------------- MIG


def mig_gpus(layout: dict[int, list[tuple[str, int, int]]]) -> list[dict[str, Any]]:
    """GPUs of node n1 with MIG instances: {gpu: [(profile, slices, GiB), ...]}."""
    gpus = gpu_list(2, "n1")
    for gpu, instances in layout.items():
        gpus[gpu]["mig"] = [
            {
                "uuid": f"MIG-n1-{gpu}-{i}",
                "profile": profile,
                "gpu_instance_id": i,
                "compute_instance_id": 0,
                "compute_slices": slices,
                "memory_bytes": gib * GiB,
            }
            for i, (profile, slices, gib) in enumerate(instances)
        ]
    return gpus


def test_a_mig_job_gets_one_instance_and_sees_only_it(server: Harness) -> None:
    layout = {0: [("1g.10gb", 1, 10)] * 2 + [("3g.40gb", 3, 40)]}
    node = server.register("n1", gpus=mig_gpus(layout))
    assert server.submit("small", mig_profile="1g.10gb").status_code == 201
    assert server.submit("medium", mig_profile="3g.40gb").status_code == 201
    assert server.submit("whole", gpus=2).status_code == 201  # GPU 0 is MIG: never whole
    server.cycle()

    small, medium = server.job("small"), server.job("medium")
    assert small["state"] == medium["state"] == "bound"
    assert small["gpu_ids"] == medium["gpu_ids"] == [0]
    assert small["gpu_uuids"] == ["MIG-n1-0-0"]
    assert medium["gpu_uuids"] == ["MIG-n1-0-2"]
    whole = server.job("whole")
    assert whole["state"] == "pending" and whole["reason"]
    desired = assignments(server, node)
    assert desired[("small", 0)]["gpu_uuids"] == ["MIG-n1-0-0"]
    assert desired[("small", 0)]["gpu_ids"] == [0]
    assert sorted(u for _, _, _, u in shares(server)) == ["MIG-n1-0-0", "MIG-n1-0-2"]

    # The instance is held: a buggy policy can not hand it out twice.
    server.submit("again", mig_profile="1g.10gb")
    again = server.job("again")["id"]
    bad = Scripted(
        lambda snap: Decisions(
            bindings=[Binding(again, (Placement("n1", (0,), mig_slice="MIG-n1-0-0"),))]
        )
    )
    SchedulerLoop(server.ctx, bad).cycle()
    assert server.job("again")["state"] == "pending"


def test_a_changed_mig_layout_replaces_the_instances_the_scheduler_sees(server: Harness) -> None:
    server.register("n1", gpus=mig_gpus({0: [("1g.10gb", 1, 10)]}))
    server.register("n1", gpus=mig_gpus({1: [("7g.80gb", 7, 80)]}))
    seen: list[Snapshot] = []

    def look(snap: Snapshot) -> Decisions:
        seen.append(snap)
        return Decisions()

    SchedulerLoop(server.ctx, Scripted(look)).cycle()
    [node] = seen[0].nodes
    assert node.devices[0].mig == ()
    assert [(m.id, m.profile, m.gpu) for m in node.devices[1].mig] == [("MIG-n1-1-0", "7g.80gb", 1)]


# ---------------------------------------------------------------- gangs


def two_nodes(server: Harness) -> tuple[str, str]:
    return server.register("n1", gpus=4), server.register("n2", gpus=4)


def test_a_gang_runs_one_worker_per_placement_and_succeeds_when_all_exit_zero(
    server: Harness,
) -> None:
    n1, n2 = two_nodes(server)
    assert server.submit("gang", gpus=4, workers=2).status_code == 201
    server.cycle()
    job = server.job("gang")
    assert job["state"] == "bound" and job["workers"] == 2
    assert job["events"][-1]["message"] == (
        "bound to 2 workers on n1 [0,1,2,3], n2 [0,1,2,3], rendezvous port 29500 (attempt 1)"
    )
    assert [(w["rank"], w["node"], w["gpu_ids"]) for w in job["worker_list"]] == [
        (0, "n1", [0, 1, 2, 3]),
        (1, "n2", [0, 1, 2, 3]),
    ]
    w0, w1 = assignments(server, n1)[("gang", 0)], assignments(server, n2)[("gang", 1)]
    assert (w0["rank"], w0["world_size"], w1["rank"], w1["world_size"]) == (0, 2, 1, 2)
    assert w0["master_addr"] == w1["master_addr"] == "n1"  # rank 0's hostname
    assert w0["master_port"] == w1["master_port"] == 29500
    assert set(assignments(server, n2)) == {("gang", 1)}

    server.sync(n1, [report(job, "running", 0, pid=10)])
    assert server.job("gang")["state"] == "bound"  # not all workers run yet
    server.sync(n2, [report(job, "running", 1, pid=20)])
    job = server.job("gang")
    assert job["state"] == "running"
    assert [(w["state"], w["pid"]) for w in job["worker_list"]] == [
        ("running", 10),
        ("running", 20),
    ]

    server.sync(n2, [report(job, "exited", 1, exit_code=0)])
    assert server.job("gang")["state"] == "running"
    server.sync(n1, [report(job, "exited", 0, exit_code=0)])
    job = server.job("gang")
    assert job["state"] == "succeeded" and job["exit_code"] == 0
    assert [w["exit_code"] for w in job["worker_list"]] == [0, 0]
    assert allocations(server) == []


def test_a_failed_worker_stops_the_others_and_the_gang_fails(server: Harness) -> None:
    n1, n2 = two_nodes(server)
    server.submit("gang", gpus=4, workers=2, grace_seconds=5)
    server.cycle()
    job = server.job("gang")
    server.sync(n1, [report(job, "running", 0, pid=10)])
    server.sync(n2, [report(job, "running", 1, pid=20)])

    woken: list[set[int]] = []
    real = server.ctx.signals.nodes_changed
    server.ctx.signals.nodes_changed = lambda ids: (woken.append(set(ids)), real(ids))[1]  # type: ignore[method-assign]
    server.sync(n2, [report(job, "exited", 1, exit_code=3)])
    server.ctx.signals.nodes_changed = real  # type: ignore[method-assign]
    job = server.job("gang")
    assert job["state"] == "stopping"
    # n1's long poll is woken at once: its worker is to be stopped now, not at the next
    # heartbeat.
    with server.ctx.db.read() as s:
        from corral.store.models import Node

        n1_id = s.scalar(select(Node.id).where(Node.name == "n1"))
    assert any(n1_id in ids for ids in woken)
    assert job["reason"] == "worker 1 on n2 exited with code 3: stopping the other workers"
    assert assignments(server, n1)[("gang", 0)]["stop"] is True
    assert len(allocations(server)) == 8  # held until every worker is gone

    server.sync(n1, [report(job, "exited", 0, exit_code=143)])
    job = server.job("gang")
    assert job["state"] == "failed" and job["exit_code"] == 3
    assert job["reason"].startswith("worker 1 on n2 exited with code 3")
    assert allocations(server) == []


def test_gang_rendezvous_ports_differ_on_one_node(server: Harness) -> None:
    node = server.register("n1", gpus=8)
    server.submit("g1", gpus=2, workers=2)
    server.submit("g2", gpus=2, workers=2)
    server.cycle()
    desired = assignments(server, node)
    assert set(desired) == {("g1", 0), ("g1", 1), ("g2", 0), ("g2", 1)}
    assert desired[("g1", 1)]["master_port"] == 29500
    assert desired[("g2", 0)]["master_port"] == 29501
    gpus = [g for a in desired.values() for g in a["gpu_ids"]]
    assert sorted(gpus) == list(range(8))


def test_a_preempted_gang_stops_every_worker_and_returns_to_the_queue(server: Harness) -> None:
    n1, n2 = two_nodes(server)
    server.submit("gang", gpus=4, workers=2)
    server.cycle()
    gang = server.job("gang")
    server.sync(n1, [report(gang, "running", 0, pid=10)])
    server.sync(n2, [report(gang, "running", 1, pid=20)])
    server.post("/projects", {"name": "team-d", "quota": 4})
    server.submit("urgent", gpus=4, project="team-d")
    urgent = server.job("urgent", "team-d")["id"]
    policy = Scripted(
        lambda snap: Decisions(
            bindings=[Binding(urgent, (Placement("n2", (0, 1, 2, 3)),))],
            preemptions=[Preemption(gang["id"], urgent, "reclaim: team-d is below its quota")],
        )
    )
    SchedulerLoop(server.ctx, policy).cycle()
    assert server.job("gang")["state"] == "stopping"
    assert assignments(server, n1)[("gang", 0)]["stop"] is True
    on_n2 = assignments(server, n2)
    assert on_n2[("gang", 1)]["stop"] is True
    assert on_n2[("urgent", 0)]["after"] == [gang["id"]]

    server.sync(n1, [report(gang, "exited", 0, exit_code=143)])
    assert server.job("gang")["state"] == "stopping"
    server.sync(n2, [report(gang, "exited", 1, exit_code=143)])
    gang = server.job("gang")
    assert gang["state"] == "pending"
    assert gang["reason"].startswith("preempted by urgent of team-d")


def test_a_silent_node_loses_the_gang_and_its_other_workers_are_withdrawn(
    server: Harness,
) -> None:
    n1, n2 = two_nodes(server)
    server.submit("gang", gpus=4, workers=2)
    server.cycle()
    job = server.job("gang")
    server.sync(n1, [report(job, "running", 0, pid=10)])
    server.sync(n2, [report(job, "running", 1, pid=20)])
    server.clock.advance(30)
    server.sync(n1)
    server.clock.advance(40)
    server.sync(n1)
    server.check_health()  # n2 silent for 70 s: down
    job = server.job("gang")
    assert job["state"] == "lost" and "n2 stopped reporting" in job["reason"]
    assert ("gang", 0) not in assignments(server, n1)
    assert allocations(server) == []


def test_master_addr_is_the_first_workers_node_address_when_it_gives_one(server: Harness) -> None:
    n1 = server.register("n1", gpus=4, address="10.0.0.1")
    n2 = server.register("n2", gpus=4)
    server.submit("gang", gpus=4, workers=2)
    server.cycle()
    assert server.get("/nodes/n1")["address"] == "10.0.0.1"
    assert assignments(server, n2)[("gang", 1)]["master_addr"] == "10.0.0.1"
    assert assignments(server, n1)[("gang", 0)]["master_addr"] == "10.0.0.1"
