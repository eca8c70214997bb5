"""``corral sim scenario``: tables, JSON/YAML, and bad files as named ``error:`` lines."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner, Result

from corral.cli.main import cli

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = ROOT / "docs" / "examples" / "reference-scenario-phase2.yaml"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["sim", "scenario", *args])


def test_table_shows_projects_jobs_and_events() -> None:
    result = run(str(REFERENCE))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "After 2 cycles (stable):"
    assert "PROJECT  QUOTA  FAIR-SHARE  ALLOCATED  PENDING" in lines
    assert any(line.split() == ["team-d", "8", "8", "8", "0"] for line in lines)
    assert any(
        line.startswith("a-5 ") and "project team-a is at its fair share (4 of 4 GPUs)" in line
        for line in lines
    )
    assert "  cycle 1  preempted  a-8  by d-1: reclaim: team-d is below its quota" in lines
    assert "  cycle 1  bound      d-1  node1 [7]" in lines


def test_json_is_the_documented_shape() -> None:
    result = run(str(REFERENCE), "-o", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data) == {"jobs", "projects", "events"}
    assert data["jobs"]["d-1"] == {"state": "running", "node": "node1", "gpu_ids": [7]}
    assert data["projects"]["team-a"] == {
        "allocated": 4,
        "quota": 4,
        "fair_share": 4,
        "pending": 6,
    }


def test_yaml_and_cycles() -> None:
    result = run(str(REFERENCE), "-o", "yaml", "--cycles", "1")
    assert result.exit_code == 0
    data = yaml.safe_load(result.stdout)
    assert data["projects"]["team-d"]["allocated"] == 8


def test_a_bad_file_is_one_error_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "nodes: [{name: n, gpus: 1}]\n"
        "projects: [{name: a, quota: -1}]\n"
        "jobs: [{name: j, project: zz}]\n"
    )
    result = run(str(path))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: projects[0].quota: must be ≥ 0 (got -1)",
        "error: jobs[0].project: unknown project 'zz'",
    ]
    assert result.stdout == ""


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run(str(tmp_path / "missing.yaml")).exit_code == 2
    assert run(str(REFERENCE), "--cycles", "0").exit_code == 2
