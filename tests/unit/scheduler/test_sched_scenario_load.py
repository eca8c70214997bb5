"""Loading scenario files: what a good file becomes, and every bad field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.scheduler.model import Placement
from corral.scheduler.scenario import ScenarioError, load_scenario, parse_scenario

GOOD = """\
cycles: 2
nodes:
  - {name: node0, gpus: 4}
  - name: node1
    gpus: 2
    gpu_memory_gib: 40
    pool: a100
    mig:
      - {gpu: 0, profile: 1g.10gb, count: 7, unmanaged: 2}
  - {name: node2, gpus: 2, schedulable: false, unmanaged_gpus: [1], cpus: 32, memory_gib: 256}
projects:
  - {name: dept, quota: 6}
  - {name: team-a, quota: 4, weight: 2, limit: 6, priority: 1, parent: dept}
  - {name: team-b, quota: 2, pools: [a100], parent: dept}
usage_half_life: 3600
usage: {team-a: 10}
jobs:
  - {name: a-1, project: team-a, gpus: 2, state: running, node: node0, gpu_ids: [0, 1]}
  - {name: a-2, project: team-a, gpus: 0.5, state: running, node: node0, gpu_ids: [2]}
  - {name: a-3, project: team-a, gpu_memory_gib: 40, state: running, node: node0, gpu_ids: [2]}
  - {name: b-1, project: team-b, mig_profile: 1g.10gb, state: running, node: node1, gpu_ids: [0]}
  - {name: a-4, project: team-a, gpus: 1, workers: 2, kind: interactive, priority: 3}
  - {name: a-5, project: team-a, gpus: 0, cpus: 4, memory_gib: 8}
expect:
  final: {}
"""


def test_a_good_file_becomes_a_snapshot() -> None:
    scenario = parse_scenario(GOOD)
    snap = scenario.snapshot
    assert scenario.cycles == 2
    assert [n.name for n in snap.nodes] == ["node0", "node1", "node2"]
    node1 = snap.nodes[1]
    assert node1.pool == "a100" and node1.devices[0].memory_bytes == 40 << 30
    slices = node1.devices[0].mig
    assert len(slices) == 7 and [s.busy_unmanaged for s in slices].count(True) == 2
    assert slices[0].id == "0:1g.10gb:0" and slices[0].compute_slices == 1
    node2 = snap.nodes[2]
    assert not node2.schedulable and node2.devices[1].busy_unmanaged and node2.cpu_cores == 32
    assert [p.name for p in snap.projects] == ["dept", "team-a", "team-b"]
    assert snap.projects[1].parent == "dept" and snap.projects[2].pools == ("a100",)
    assert [j.name for j in snap.running] == ["a-1", "a-2", "a-3", "b-1"]
    assert [j.name for j in snap.pending] == ["a-4", "a-5"]
    b1 = snap.running[3]
    assert b1.placements == (Placement("node1", (0,), mig_slice="0:1g.10gb:2"),)  # 0-1 busy
    a4 = snap.pending[0]
    assert (a4.id, a4.order, a4.kind, a4.workers, a4.priority) == (5, 4, "interactive", 2, 3)
    assert snap.running[2].gpu_memory_bytes == 40 << 30
    assert snap.config.usage_half_life == 3600 and snap.usage == {"team-a": 10}
    assert scenario.job_names[1] == "a-1"
    assert scenario.expect == {"final": {}}


def test_defaults() -> None:
    scenario = parse_scenario(
        "nodes: [{name: n, gpus: 1}]\nprojects: [{name: p}]\njobs: [{name: j, project: p}]\n"
    )
    [job] = scenario.snapshot.pending
    assert scenario.cycles == 5
    assert (job.gpus, job.kind, job.workers, job.priority, job.pool) == (1, "train", 1, 0, None)
    assert scenario.snapshot.nodes[0].devices[0].memory_bytes == 80 << 30
    assert scenario.snapshot.projects[0].weight is None  # = the quota


NODES = "nodes:\n  - {name: node0, gpus: 4}\n  - {name: n1, gpus: 2, pool: a100}\n"
PROJECTS = "projects:\n  - {name: a, quota: 4}\n  - {name: b, quota: 2, pools: [a100]}\n"


def _bad(jobs: str = "", projects: str = PROJECTS, nodes: str = NODES, extra: str = "") -> str:
    return nodes + projects + (f"jobs:\n{jobs}" if jobs else "") + extra


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("cycles: 0\n", "cycles: must be ≥ 1 (got 0)"),
        ("colour: red\n", "colour: unknown key (known: cycles, nodes, projects, jobs, usage,"),
        ("nodes: {}\n", "nodes: must be a list (got {})"),
        ("nodes: [{gpus: 2}]\n", "nodes[0].name: is required"),
        ("nodes: [{name: x}]\n", "nodes[0].gpus: is required (whole GPUs of the node, e.g. 8)"),
        ("nodes: [{name: x, gpus: -1}]\n", "nodes[0].gpus: must be ≥ 0 (got -1)"),
        (
            "nodes: [{name: x, gpus: two}]\n",
            "nodes[0].gpus: must be a whole number ≥ 0 (got 'two')",
        ),
        ("nodes: [{name: x, gpus: 1}, {name: x, gpus: 1}]\n", "nodes[1].name: duplicate node 'x'"),
        (
            "nodes: [{name: x, gpus: 1, gpu_memory_gib: 0}]\n",
            "nodes[0].gpu_memory_gib: must be > 0",
        ),
        ("nodes: [{name: x, gpus: 1, gpu: 2}]\n", "nodes[0].gpu: unknown key (known: name, gpus,"),
        (
            "nodes: [{name: x, gpus: 2, unmanaged_gpus: [5]}]\n",
            "nodes[0].unmanaged_gpus[0]: no GPU 5 on this node (it has GPUs 0-1)",
        ),
        (
            "nodes: [{name: x, gpus: 1, mig: [{gpu: 3, profile: 1g.10gb}]}]\n",
            "nodes[0].mig[0].gpu: no GPU 3 on this node (it has GPUs 0-0)",
        ),
        (
            "nodes: [{name: x, gpus: 1, mig: [{gpu: 0, profile: big}]}]\n",
            "nodes[0].mig[0].profile: not a MIG profile such as 1g.10gb or 3g.40gb (got 'big')",
        ),
        (
            "nodes: [{name: x, gpus: 1, mig: [{gpu: 0, profile: 3g.40gb, count: 3}]}]\n",
            "nodes[0].mig[0]: GPU 0's slices use 9 of its 7 compute slices",
        ),
        (
            _bad(projects="projects: [{name: a, quota: -1}]\n"),
            "projects[0].quota: must be ≥ 0 (got -1)",
        ),
        (
            _bad(projects="projects: [{name: a, weight: -2}]\n"),
            "projects[0].weight: must be ≥ 0 (got -2)",
        ),
        (
            _bad(projects="projects: [{name: a, quota: 4, limit: 2}]\n"),
            "projects[0].limit: must be ≥ its quota (4) (got 2)",
        ),
        (
            _bad(projects="projects: [{name: a}, {name: b, parent: dept-x}]\n"),
            "projects[1].parent: unknown project 'dept-x'",
        ),
        (
            _bad(projects="projects: [{name: a, parent: b}, {name: b, parent: a}]\n"),
            "projects: parent cycle a → b → a",
        ),
        (
            _bad(projects="projects: [{name: a, pools: [gpu-x]}]\n"),
            "projects[0].pools[0]: unknown pool 'gpu-x' (pools: a100, default)",
        ),
        (
            _bad(projects="projects: [{name: d, quota: 2}, {name: c, quota: 3, parent: d}]\n"),
            "projects[0].quota: the quotas of its projects add up to 3, more than its quota (2)",
        ),
        (_bad("  - {project: a}\n"), "jobs[0].name: is required"),
        (_bad("  - {name: j, project: zz}\n"), "jobs[0].project: unknown project 'zz'"),
        (
            _bad("  - {name: j, project: a}\n  - {name: j, project: a}\n"),
            "jobs[1].name: duplicate job 'j'",
        ),
        (
            _bad("  - {name: j, project: a, kind: batch}\n"),
            "jobs[0].kind: must be one of train, interactive (got 'batch')",
        ),
        (
            _bad("  - {name: j, project: a, gpus: 1.5}\n"),
            "jobs[0].gpus: must be a whole number or a fraction below 1 (got 1.5)",
        ),
        (
            _bad("  - {name: j, project: a, gpus: 0.5, workers: 2}\n"),
            "jobs[0].gpus: a fraction (0.5) cannot be combined with workers > 1",
        ),
        (
            _bad("  - {name: j, project: a, gpus: 1, gpu_memory_gib: 10}\n"),
            "jobs[0].gpu_memory_gib: give only one of gpus, gpu_memory_gib and mig_profile",
        ),
        (
            _bad("  - {name: j, project: a, gpu_memory_gib: 10, workers: 2}\n"),
            "jobs[0].workers: a GPU-memory request is for one worker (got workers > 1)",
        ),
        (
            _bad("  - {name: j, project: a, mig_profile: huge}\n"),
            "jobs[0].mig_profile: not a MIG profile such as 1g.10gb (got 'huge')",
        ),
        (_bad("  - {name: j, project: a, workers: 0}\n"), "jobs[0].workers: must be ≥ 1 (got 0)"),
        (
            _bad("  - {name: j, project: a, pool: gpu-x}\n"),
            "jobs[0].pool: unknown pool 'gpu-x' (pools: a100, default)",
        ),
        (
            _bad("  - {name: j, project: b, pool: default}\n"),
            "jobs[0].pool: project b may not use pool 'default' (its pools: a100)",
        ),
        (
            _bad("  - {name: j, project: a, state: done}\n"),
            "jobs[0].state: must be one of pending, running (got 'done')",
        ),
        (
            _bad("  - {name: j, project: a, node: node0}\n"),
            "jobs[0].node: only running jobs have one (this job is pending)",
        ),
        (
            _bad("  - {name: j, project: a, state: running}\n"),
            "jobs[0].node: a running job needs its node",
        ),
        (
            _bad("  - {name: j, project: a, state: running, node: node0}\n"),
            "jobs[0].gpu_ids: a running job needs its GPU ids",
        ),
        (
            _bad("  - {name: j, project: a, state: running, node: nodeX, gpu_ids: [0]}\n"),
            "jobs[0].node: unknown node 'nodeX'",
        ),
        (
            _bad("  - {name: j, project: a, state: running, node: node0, gpu_ids: [7]}\n"),
            "jobs[0].gpu_ids: node0 has no GPU 7 (it has GPUs 0-3)",
        ),
        (
            _bad("  - {name: j, project: a, gpus: 2, state: running, node: node0, gpu_ids: [1]}\n"),
            "jobs[0].gpu_ids: lists 1 GPUs, but the job asks for 2 per worker",
        ),
        (
            _bad(
                "  - {name: j, project: a, state: running, node: node0, gpu_ids: [1]}\n"
                "  - {name: k, project: a, state: running, node: node0, gpu_ids: [1]}\n"
            ),
            "jobs[1].gpu_ids: GPU 1 of node0 is already held by j",
        ),
        (
            _bad(
                "  - {name: j, project: a, gpus: 0.75, state: running, node: node0, gpu_ids: [1]}\n"
                "  - {name: k, project: a, gpus: 0.5, state: running, node: node0, gpu_ids: [1]}\n"
            ),
            "jobs[1].gpu_ids: GPU 1 of node0 would be more than full (j, k use 1.25 of its memory)",
        ),
        (
            _bad("  - {name: j, project: b, state: running, node: node0, gpu_ids: [0]}\n"),
            "jobs[0].node: node0 is in pool default, which this job may not use (its pools: a100)",
        ),
        (
            _bad(
                "  - {name: g, project: a, workers: 2, state: running, node: node0, gpu_ids: [0]}\n"
            ),
            "jobs[0].node: a gang needs a list of 2 nodes, one per worker (got 'node0')",
        ),
        (
            _bad(
                "  - {name: g, project: a, workers: 2, state: running, node: [node0, n1],"
                " gpu_ids: [[0], [0]]}\n"
            ),
            "jobs[0].node: a gang's workers must all be in one pool",
        ),
        ("usage: {nobody: 3}\n", "usage.nobody: unknown project 'nobody'"),
        ("usage_half_life: 0\n", "usage_half_life: must be > 0 (got 0)"),
        ("nodes: [{name: x, gpus: 1}\n", "bad YAML at line 2, column 1:"),
        ("nodes: []\nnodes: []\n", "bad YAML at line 2, column 1: key 'nodes' is given twice"),
        ("- just\n- a list\n", "the file: must be a mapping of keys to values"),
    ],
)
def test_bad_fields_are_named(text: str, problem: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text)
    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems


def test_every_problem_is_listed_one_line_each() -> None:
    text = (
        "cycles: -1\n"
        "nodes: [{name: n, gpus: x}]\n"
        "projects: [{name: a, quota: -1}, {name: b, parent: zz}]\n"
        "jobs: [{name: j, project: zz}, {name: k, project: a, gpus: 2.5}]\n"
    )
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text)
    problems = caught.value.problems
    assert [line.split(":")[0] for line in problems] == [
        "cycles",
        "nodes[0].gpus",
        "projects[0].quota",
        "projects[1].parent",
        "jobs[0].project",
        "jobs[1].gpus",
    ]
    assert str(caught.value) == "\n".join(problems)


def test_jobs_may_not_go_to_a_department() -> None:
    text = (
        NODES
        + "projects: [{name: d, quota: 4}, {name: t, quota: 2, parent: d}]\n"
        + "jobs: [{name: j, project: d}]\n"
    )
    with pytest.raises(ScenarioError, match=r"jobs\[0\].project: d is a department"):
        parse_scenario(text)


def test_load_names_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    assert load_scenario(path).source == str(path)
