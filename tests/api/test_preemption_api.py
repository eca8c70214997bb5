"""Preemption, the queue and interactive limits through the server, with a scripted policy.

The policy's choices are tested in tests/unit/scheduler; here the server's side is: a
victim stops, hands its GPUs to the job that preempted it, and returns to the queue.
"""

from __future__ import annotations

from collections.abc import Callable

from api.conftest import Harness
from corral.scheduler import Binding, Decisions, Placement, Preemption, Snapshot
from corral.server.loops.cycles import SchedulerLoop


class Scripted:
    def __init__(self, decide: Callable[[Snapshot], Decisions]) -> None:
        self.decide = decide
        self.seen: list[Snapshot] = []

    def schedule(self, snapshot: Snapshot) -> Decisions:
        self.seen.append(snapshot)
        return self.decide(snapshot)


def test_a_preempted_job_hands_over_its_gpus_and_returns_to_the_queue(server: Harness) -> None:
    node = server.register("n1", gpus=1)
    server.submit("victim", gpus=1, grace_seconds=7)
    server.cycle()
    victim_id = server.job("victim")["id"]
    server.sync(node, [{"job_id": victim_id, "attempt": 1, "state": "running", "pid": 5}])
    server.post("/projects", {"name": "team-d", "quota": 1})
    server.submit("urgent", gpus=1, project="team-d")
    urgent_id = server.job("urgent", "team-d")["id"]

    policy = Scripted(
        lambda snap: Decisions(
            bindings=[Binding(urgent_id, (Placement("n1", (0,)),))],
            preemptions=[Preemption(victim_id, urgent_id, "reclaim: team-d is below its quota")],
        )
    )
    SchedulerLoop(server.ctx, policy).cycle()

    victim = server.job("victim")
    assert victim["state"] == "stopping"
    assert victim["reason"] == "preempted by urgent of team-d: reclaim: team-d is below its quota"
    assert server.job("urgent", "team-d")["state"] == "bound"
    desired = {a["name"]: a for a in server.sync(node)["assignments"]}
    assert desired["victim"]["stop"] is True and desired["victim"]["grace_seconds"] == 7
    assert desired["urgent"]["after"] == [victim_id]
    assert desired["urgent"]["gpu_ids"] == [0]

    # Until the victim is gone, the next cycle sees the GPU as the newcomer's only.
    policy2 = Scripted(lambda snap: Decisions())
    SchedulerLoop(server.ctx, policy2).cycle()
    [snap] = policy2.seen
    assert [j.name for j in snap.running] == ["urgent"]

    server.sync(node, [{"job_id": victim_id, "attempt": 1, "state": "exited", "exit_code": 143}])
    victim = server.job("victim")
    assert victim["state"] == "pending" and victim["node"] is None and victim["gpu_ids"] == []
    assert [e["type"] for e in victim["events"]][-3:] == ["stopping", "preempted", "pending"]
    assert "waiting to restart" in victim["reason"]
    assert server.get("/nodes/n1")["gpus_allocated"] == 1  # held by urgent, once


def test_deleting_a_preempted_job_while_it_stops_ends_it(server: Harness) -> None:
    node = server.register("n1", gpus=1)
    server.submit("victim", gpus=1)
    server.cycle()
    victim_id = server.job("victim")["id"]
    server.submit("urgent", gpus=1)
    urgent_id = server.job("urgent")["id"]
    SchedulerLoop(
        server.ctx,
        Scripted(
            lambda snap: Decisions(
                bindings=[Binding(urgent_id, (Placement("n1", (0,)),))],
                preemptions=[Preemption(victim_id, urgent_id, "priority")],
            )
        ),
    ).cycle()
    server.http.delete("/api/v1/jobs/default/victim", headers=server.h(server.admin))
    server.sync(node, [{"job_id": victim_id, "attempt": 1, "state": "exited", "exit_code": 0}])
    assert server.job("victim")["state"] == "stopped"


def test_queue_lists_pending_jobs_in_the_policys_order_with_reasons(server: Harness) -> None:
    for name in ("first", "second", "third"):
        server.submit(name, gpus=1)
    ids = {n: server.job(n)["id"] for n in ("first", "second", "third")}
    SchedulerLoop(
        server.ctx,
        Scripted(
            lambda snap: Decisions(
                reasons={ids["third"]: "r3", ids["first"]: "r1", ids["second"]: "r2"},
                queue=[ids["third"], ids["first"], ids["second"]],
            )
        ),
    ).cycle()
    server.submit("fourth", gpus=1)  # not yet seen by the scheduler: goes last
    entries = server.get("/queue")["jobs"]
    assert [(e["position"], e["name"], e["reason"]) for e in entries] == [
        (1, "third", "r3"),
        (2, "first", "r1"),
        (3, "second", "r2"),
        (4, "fourth", "waiting for the scheduler"),
    ]


def test_interactive_jobs_are_stopped_when_the_project_limit_passes(server: Harness) -> None:
    node = server.register("n1", gpus=2)
    # Interactive jobs run only within quota: give the project room for one.
    server.post("/projects", {"name": "lab", "quota": 2, "interactive_limit_seconds": 3600})
    server.submit("nb", project="lab", kind="interactive", gpus=1)
    server.submit("train", project="lab", gpus=1)
    server.cycle()
    for name in ("nb", "train"):
        job_id = server.job(name, "lab")["id"]
        server.sync(node, [{"job_id": job_id, "attempt": 1, "state": "running", "pid": 1}])
    server.clock.advance(3599)
    server.sync(node)
    server.check_health()
    assert server.job("nb", "lab")["state"] == "running"
    server.clock.advance(2)
    server.sync(node)
    server.check_health()
    nb = server.job("nb", "lab")
    assert nb["state"] == "stopping"
    assert nb["reason"] == "interactive time limit of project lab (1h) reached"
    assert server.job("train", "lab")["state"] == "running"  # train jobs have no such limit
    [a] = [a for a in server.sync(node)["assignments"] if a["name"] == "nb"]
    assert a["stop"] is True


def test_decayed_usage_halves_per_half_life_and_reaches_the_policy(server: Harness) -> None:
    from corral.server.services.scheduling import run_cycle

    server.ctx.settings.usage_half_life = 3600
    node = server.register("n1", gpus=4)
    server.submit("j", gpus=2)
    server.cycle()
    job_id = server.job("j")["id"]
    server.sync(node, [{"job_id": job_id, "attempt": 1, "state": "running", "pid": 1}])
    policy = Scripted(lambda snap: Decisions())
    with server.ctx.db.tx() as s:
        run_cycle(s, policy, server.clock.now(), 3600)
    server.clock.advance(3600)  # one half-life running 2 GPUs: 7200 GPU-seconds
    with server.ctx.db.tx() as s:
        run_cycle(s, policy, server.clock.now(), 3600)
    assert policy.seen[-1].usage["default"] == 7200
    assert policy.seen[-1].config.usage_half_life == 3600
    server.sync(node, [{"job_id": job_id, "attempt": 1, "state": "exited", "exit_code": 0}])
    server.clock.advance(3600)  # idle for one half-life: it halves
    with server.ctx.db.tx() as s:
        run_cycle(s, policy, server.clock.now(), 3600)
    assert policy.seen[-1].usage["default"] == 3600
