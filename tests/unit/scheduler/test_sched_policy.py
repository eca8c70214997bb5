"""FairSharePolicy end to end, as tables run for several cycles (KAI-Scheduler style).

Each case is a cluster in and the settled allocation (and preemption count) out; the
scenario files in tests/scenarios/ cover each rule in more detail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from sched_factories import GIB, job, node, project, projects, settle, snapshot

from corral.scheduler import FairSharePolicy
from corral.scheduler.model import JobView, SchedulerConfig, Snapshot


@dataclass
class Case:
    name: str
    build: Callable[[], Snapshot]
    allocated: dict[str, float]
    preempted: int = 0


def _many(project_name: str, n: int, gpus: float = 1, **kw: object) -> list[JobView]:
    return [job(project_name, gpus, **kw) for _ in range(n)]  # type: ignore[arg-type]


def _full(project_name: str, node_name: str, ids: range) -> list[JobView]:
    return [job(project_name, 1, on=node_name, ids=(i,)) for i in ids]


CASES = [
    Case(
        "reference: d idle, a b c borrow by weight",
        lambda: snapshot(
            [node("n0"), node("n1")],
            _many("a", 10) + _many("b", 10) + _many("c", 10),
            projects(("a", 4), ("b", 2), ("c", 2), ("d", 8)),
        ),
        {"a": 8, "b": 4, "c": 4, "d": 0},
    ),
    Case(
        "reference: d returns and reclaims its quota",
        lambda: snapshot(
            [node("n0"), node("n1")],
            [
                *_full("a", "n0", range(8)),
                *_full("b", "n1", range(4)),
                *_full("c", "n1", range(4, 8)),
                *_many("d", 8),
            ],
            projects(("a", 4), ("b", 2), ("c", 2), ("d", 8)),
        ),
        {"a": 4, "b": 2, "c": 2, "d": 8},
        preempted=8,
    ),
    Case(
        "limit is hard even with idle GPUs",
        lambda: snapshot([node("n0")], _many("a", 6), [project("a", 2, limit=3)]),
        {"a": 3},
    ),
    Case(
        "interactive only within quota",
        lambda: snapshot([node("n0")], _many("a", 4, kind="interactive"), projects(("a", 2))),
        {"a": 2},
    ),
    Case(
        "train borrows idle GPUs over its share",
        lambda: snapshot(
            [node("n0")], _many("a", 6), [project("a", 2, weight=0), project("b", 6, order=1)]
        ),
        {"a": 6, "b": 0},
    ),
    Case(
        "a job of no listed project gets an implicit share",
        lambda: snapshot([node("n0")], _many("ghost", 3) + _many("a", 8), projects(("a", 4))),
        # ghost: quota 0, weight 1; a: weight 4. The 4 GPUs over quota: 3.2 and 0.8 → 3, 1.
        {"a": 7, "ghost": 1},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_settles_to(case: Case) -> None:
    settled = settle(case.build())
    assert {k: v for k, v in settled.allocated().items() if k in case.allocated} == (case.allocated)
    assert len(settled.preempted) == case.preempted
    # Stable: scheduling the settled state again changes nothing.
    again = FairSharePolicy().schedule(settled.snapshot)
    assert not again.bindings and not again.preemptions


def test_same_snapshot_same_decisions() -> None:
    snap = snapshot(
        [node("n0"), node("n1", 4, pool="x")],
        _full("a", "n0", range(6)) + _many("b", 5, 2) + _many("c", 3, 0.5),
        projects(("a", 2), ("b", 4), ("c", 2)),
    )
    first = FairSharePolicy().schedule(snap)
    assert first.bindings and first.preemptions
    for _ in range(3):
        assert FairSharePolicy().schedule(snap) == first


def test_every_pending_job_gets_a_reason_and_projects_their_numbers() -> None:
    snap = snapshot(
        [node("n0", 4)],
        [*_many("a", 6), job("b", 8)],
        [project("a", 2, order=0), project("b", 2, order=1)],
    )
    decisions = FairSharePolicy().schedule(snap)
    bound = {b.job_id for b in decisions.bindings}
    assert set(decisions.reasons) == {j.id for j in snap.pending} - bound
    share = decisions.projects["a"]
    # b's 8-GPU job can use at most the 4 GPUs there are, so quotas take all: 2 and 2;
    # a runs 2 more over its share on the GPUs b cannot use.
    assert (share.quota, share.fair_share, share.allocated, share.pending) == (2, 2, 4, 2)
    assert decisions.projects["b"].pending == 1


def test_reasons_people_understand() -> None:
    snap = snapshot(
        [node("n0", 8), node("x0", 2, pool="x"), node("cordoned", 8, ready=False)],
        [
            job("full", 1, on="n0", ids=(0,)),
            job("lim", 1, name="limited"),
            job("nb", 1, kind="interactive", name="notebook"),
            job("a", 8, name="too-big"),
            job("a", 2, pool="x", name="pool-x"),
            job("a", 16, name="no-such-node"),
            job("a", 4, workers=3, name="gang"),
            job("a", 0, mig_profile="1g.10gb", name="mig"),
            job("a", 1.5, name="odd"),
            job("a", 1, pool="nowhere", name="nowhere"),
            job("dept", 1, name="to-dept"),
        ],
        [
            project("full", 1, order=0, weight=0),
            project("lim", 4, order=1, limit=0),
            project("nb", 0, order=2),
            project("a", 6, order=3),
            project("dept", 0, order=4),
            project("team", 0, order=5, parent="dept"),
        ],
    )
    decisions = FairSharePolicy().schedule(snap)
    names = {j.id: j.name for j in snap.pending}
    reasons = {names[i]: r for i, r in decisions.reasons.items()}
    assert reasons["limited"] == "project lim reached its limit (0 GPUs)"
    assert reasons["notebook"] == "interactive jobs run only within quota (nb: quota 0, in use 0)"
    assert reasons["no-such-node"] == "no node has 16 GPUs (largest: 8)"
    assert "gang needs room for 3 workers with 4 free GPUs each in one pool" in reasons["gang"]
    assert reasons["mig"] == "no node has 1g.10gb MIG slices"
    assert reasons["odd"] == "asks for 1.5 GPUs: a job gets whole GPUs or a fraction below 1"
    assert reasons["nowhere"] == "no node is in pool nowhere"
    assert reasons["to-dept"] == (
        "project dept is a department: submit to one of its projects (team)"
    )
    assert "pool-x" not in reasons  # it started in pool x
    assert reasons["too-big"].startswith("no node has 8 GPUs free (most free: ")


def test_no_nodes_at_all() -> None:
    decisions = FairSharePolicy().schedule(snapshot([], [job("a")], projects(("a", 1))))
    assert list(decisions.reasons.values()) == ["no nodes have joined the cluster yet"]


def test_victims_carry_who_and_why() -> None:
    victim = job("x", 1, on="n0", ids=(0,))
    asker = job("y", 1)
    decisions = FairSharePolicy().schedule(
        snapshot([node("n0", 1)], [victim, asker], projects(("x", 0), ("y", 1)))
    )
    [preemption] = decisions.preemptions
    assert (preemption.job_id, preemption.by_job_id) == (victim.id, asker.id)
    assert preemption.reason == "reclaim: y is below its quota"
    assert [b.job_id for b in decisions.bindings] == [asker.id]


def test_the_asker_is_bound_to_the_devices_its_victims_free() -> None:
    a = job("x", 4, on="n1", ids=(0, 1, 2, 3))
    b = job("x", 4, on="n0", ids=(4, 5, 6, 7))
    c = job("x", 4, on="n0", ids=(0, 1, 2, 3))
    asker = job("y", 4)
    decisions = FairSharePolicy().schedule(
        snapshot([node("n0"), node("n1", 4)], [a, b, c, asker], projects(("x", 0), ("y", 4)))
    )
    [preemption] = decisions.preemptions
    assert preemption.job_id == c.id  # the newest
    assert decisions.bindings[0].placements[0].node == "n0"
    assert decisions.bindings[0].gpu_ids == (0, 1, 2, 3)


def test_time_decayed_usage_breaks_ties_only_when_enabled() -> None:
    def build(half_life: float | None) -> Snapshot:
        return snapshot(
            [node("n0", 2)],
            [job("x", 1, on="n0", ids=(0,)), job("y", 1, on="n0", ids=(1,)), job("z", 1)],
            [
                project("x", 0, order=0, weight=0),
                project("y", 0, order=1, weight=0),
                project("z", 1, order=2),
            ],
            usage={"x": 1e6, "y": 1.0},
            config=SchedulerConfig(usage_half_life=half_life),
        )

    victims = {}
    for half_life in (None, 3600.0):
        snap = build(half_life)
        names = {j.id: j.name for j in snap.running}
        decisions = FairSharePolicy().schedule(snap)
        victims[half_life] = names[decisions.preemptions[0].job_id].split("-")[0]
    assert victims == {None: "y", 3600.0: "x"}  # off: the newer project yields


def test_memory_jobs_share_by_bytes() -> None:
    jobs = [job("a", 0, gpu_memory_bytes=30 * GIB) for _ in range(5)]
    settled = settle(snapshot([node("n0", 2)], jobs, projects(("a", 2))))
    gpus = sorted(p.gpu_ids[0] for p in settled.running().values())
    assert gpus == [0, 0, 1, 1]  # two 30 GiB jobs per 80 GiB GPU; the fifth waits


def test_departments_reclaim_inside_before_across() -> None:
    snap = snapshot(
        [node("n0"), node("n1")],
        _full("b", "n0", range(8)) + _full("c", "n1", range(8)) + _many("a", 4),
        [
            project("dept-1", 8, order=0),
            project("a", 4, order=1, parent="dept-1"),
            project("b", 4, order=2, parent="dept-1"),
            project("dept-2", 8, order=3),
            project("c", 8, order=4, parent="dept-2"),
        ],
    )
    settled = settle(snap)
    assert settled.allocated()["c"] == 8
    assert (settled.allocated()["a"], settled.allocated()["b"]) == (4, 4)


def test_stable_under_repeated_scheduling_with_mixed_shapes() -> None:
    snap = snapshot(
        [node("n0"), node("n1", 4, mig={0: [("1g.10gb", 7)]}), node("n2", 8, pool="x")],
        _many("a", 3, 2)
        + _many("b", 4, 0.5)
        + [job("b", 0, mig_profile="1g.10gb") for _ in range(3)]
        + [job("c", 4, workers=2), job("c", 1, pool="x")]
        + _many("d", 5, kind="interactive"),
        projects(("a", 4), ("b", 2), ("c", 6), ("d", 2)),
    )
    settled = settle(snap)
    later = replace(settled.snapshot, pending=(*settled.snapshot.pending, *_many("a", 3)))
    again = settle(later)
    assert again.cycles <= 4
