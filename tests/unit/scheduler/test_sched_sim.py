"""The simulator: cycles applied like the server does, events, the documented JSON shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from corral.scheduler import FifoPolicy
from corral.scheduler.scenario import parse_scenario
from corral.scheduler.sim import run_simulation

RECLAIM = """\
nodes: [{name: n0, gpus: 2}, {name: n1, gpus: 4}]
projects: [{name: x, quota: 0}, {name: y, quota: 4}]
jobs:
  - {name: x-1, project: x, state: running, node: n0, gpu_ids: [0]}
  - {name: x-2, project: x, state: running, node: n0, gpu_ids: [1]}
  - {name: x-gang, project: x, gpus: 2, workers: 2, state: running, node: [n1, n1],
     gpu_ids: [[0, 1], [2, 3]]}
  - {name: y-1, project: y, gpus: 2}
  - {name: y-2, project: y, gpus: 2}
"""


def test_preempted_jobs_wait_again_and_say_why() -> None:
    result = run_simulation(parse_scenario(RECLAIM))
    out = result.to_json()
    assert result.converged and result.cycles_run == 2
    assert out["jobs"]["y-1"] == {"state": "running", "node": "n1", "gpu_ids": [0, 1]}
    assert out["jobs"]["x-gang"]["state"] == "pending"
    reason = out["jobs"]["x-gang"]["reason"]
    assert reason.startswith(
        "preempted by y-1 of y: reclaim: y is below its quota; now: project x "
    )
    assert out["projects"]["y"] == {"allocated": 4, "quota": 4, "fair_share": 4, "pending": 0}
    preempted = [e for e in out["events"] if e["action"] == "preempted"]
    assert preempted == [
        {
            "cycle": 1,
            "job": "x-gang",
            "action": "preempted",
            "by": "y-1",
            "reason": "reclaim: y is below its quota",
        }
    ]
    assert [e["job"] for e in out["events"] if e["action"] == "bound"] == ["y-1", "y-2"]
    assert result.bound == {1: 2} and result.preempted == {1: 1}


def test_gangs_report_a_node_and_gpu_list_per_worker() -> None:
    text = (
        "nodes: [{name: a, gpus: 2}, {name: b, gpus: 2}]\n"
        "projects: [{name: p, quota: 4}]\n"
        "jobs: [{name: g, project: p, gpus: 2, workers: 2}]\n"
    )
    out = run_simulation(parse_scenario(text)).to_json()
    assert out["jobs"]["g"] == {"state": "running", "node": ["a", "b"], "gpu_ids": [[0, 1], [0, 1]]}
    assert out["events"][0] == {
        "cycle": 1,
        "job": "g",
        "action": "bound",
        "node": ["a", "b"],
        "gpu_ids": [[0, 1], [0, 1]],
    }


def test_mig_jobs_name_their_slice() -> None:
    text = (
        "nodes: [{name: a, gpus: 1, mig: [{gpu: 0, profile: 1g.10gb, count: 7}]}]\n"
        "projects: [{name: p, quota: 1}]\n"
        "jobs: [{name: m, project: p, mig_profile: 1g.10gb}]\n"
    )
    out = run_simulation(parse_scenario(text)).to_json()
    assert out["jobs"]["m"] == {
        "state": "running",
        "node": "a",
        "gpu_ids": [0],
        "mig_slice": "0:1g.10gb:0",
    }
    assert out["projects"]["p"]["allocated"] == 0.1429  # 1/7 of a GPU, to 4 places


def test_cycles_override_and_reasons_of_an_unfinished_run() -> None:
    scenario = parse_scenario(RECLAIM)
    result = run_simulation(scenario, cycles=1)
    assert result.cycles_run == 1 and not result.converged
    out = result.to_json()
    # The state after cycle 1 is described: y's jobs run, x's gang waits with a reason.
    assert out["jobs"]["y-2"]["state"] == "running"
    assert "reason" in out["jobs"]["x-gang"]


def test_stops_early_when_nothing_changes() -> None:
    text = "nodes: [{name: a, gpus: 1}]\nprojects: [{name: p, quota: 1}]\njobs: []\ncycles: 9\n"
    result = run_simulation(parse_scenario(text))
    assert (result.cycles_run, result.converged, result.events) == (1, True, [])


def test_any_policy_can_be_simulated() -> None:
    text = (
        "nodes: [{name: a, gpus: 2}]\nprojects: [{name: p}]\n"
        "jobs: [{name: j1, project: p, gpus: 2}, {name: j2, project: p}]\n"
    )
    out = run_simulation(parse_scenario(text), policy=FifoPolicy()).to_json()
    assert out["jobs"]["j1"]["state"] == "running"
    assert out["jobs"]["j2"]["state"] == "pending"


def test_results_do_not_depend_on_the_hash_seed() -> None:
    """Same scenarios, different string hashing (set order): the same results."""
    root = Path(__file__).resolve().parents[3]
    files = sorted(str(p) for p in (root / "tests" / "scenarios").glob("*.yaml"))
    script = (
        "import json, sys\n"
        "from corral.scheduler import load_scenario, run_simulation\n"
        "print(json.dumps([run_simulation(load_scenario(f)).to_json() for f in sys.argv[1:]]))\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script, *files],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "12345")
    }
    assert len(outputs) == 1


def test_sim_compares_policies_on_the_reference_scenario(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from corral.cli.main import cli

    scenario = Path(__file__).parents[3] / "docs" / "examples" / "reference-scenario.yaml"
    runs = {}
    for policy in ("fair-share", "fifo"):
        result = CliRunner().invoke(
            cli, ["sim", "scenario", str(scenario), "--policy", policy, "-o", "json"]
        )
        assert result.exit_code == 0, result.output
        runs[policy] = json.loads(result.stdout)["jobs"]
    running = {
        p: Counter(n.split("-")[0] for n, j in jobs.items() if j["state"] == "running")
        for p, jobs in runs.items()
    }
    assert running["fair-share"] == {"a": 8, "b": 4, "c": 4}
    assert running["fifo"] == {"a": 10, "b": 6}  # first come, first served: c gets nothing
