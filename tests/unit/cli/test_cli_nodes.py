"""`corral nodes` and `corral node NAME`."""

from __future__ import annotations

import json
import re

import yaml
from cli_fakes import FakeApi, Runner, gpu, node

from corral.core.schemas import NodeOut

REAL = node("gpu-01", gpus=[gpu(i) for i in range(8)], gpus_allocated=3, jobs=["team-a/train-1"])
SIM = node(
    "demo-node-3",
    gpus=[gpu(i, "RTX4090", simulated=True) for i in range(4)],
    simulated=True,
    gpu_backend="simulated",
    driver_version=None,
    cuda_version=None,
    last_heartbeat=None,
    state="not_ready",
)


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_nodes_table(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/nodes", json={"nodes": [REAL, SIM]})

    result = run("nodes")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert cells(lines[0]) == ["NAME", "STATE", "GPUS", "MODEL", "CPUS", "MEMORY", "DRIVER",
                               "CUDA", "HEARTBEAT"]  # fmt: skip
    assert cells(lines[1]) == ["gpu-01", "ready", "3/8", "A100-80GB", "64", "512GiB",
                               "550.54.15", "12.4", "3s ago"]  # fmt: skip
    assert cells(lines[2]) == ["demo-node-3", "not_ready", "0/4", "RTX4090 (simulated)", "64",
                               "512GiB", "-", "-", "never"]  # fmt: skip


def test_nodes_json_and_yaml(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/nodes", json={"nodes": [REAL, SIM]})

    as_json = json.loads(run("nodes", "-o", "json").stdout)
    as_yaml = yaml.safe_load(run("nodes", "-o", "yaml").stdout)

    assert as_json == as_yaml == [REAL, SIM]
    assert set(NodeOut.model_fields) <= set(as_json[0])


def test_no_nodes_says_how_to_add_one(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/nodes", json={"nodes": []})

    result = run("nodes")

    assert result.exit_code == 0
    assert "corral join-token" in result.stderr


def test_node_details_list_gpus_and_jobs(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/nodes/gpu-01", json=REAL)

    result = run("node", "gpu-01")

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"^GPUs:\s+3/8 allocated$", out, re.MULTILINE)
    assert re.search(r"^Driver:\s+550.54.15$", out, re.MULTILINE)
    assert re.search(r"^INDEX\s+UUID\s+MODEL\s+MEMORY$", out, re.MULTILINE)
    assert re.search(r"^7\s+GPU-0007\s+A100-80GB\s+80GiB$", out, re.MULTILINE)
    assert "Jobs: team-a/train-1" in out


def test_simulated_node_details_say_so(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/nodes/demo-node-3", json=SIM)

    result = run("node", "demo-node-3")

    assert re.search(r"^GPU backend:\s+simulated$", result.stdout, re.MULTILINE)
    assert "GPUs: (simulated)" in result.stdout


def test_node_names_may_have_dots(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/nodes/gpu01.lab.example", json=node("gpu01.lab.example"))

    result = run("node", "gpu01.lab.example", "-o", "json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "gpu01.lab.example"
    assert "GPUs: none" in run("node", "gpu01.lab.example").stdout


def test_a_bad_node_name_is_a_usage_error(run: Runner, api: FakeApi) -> None:
    result = run("node", "../etc")

    assert result.exit_code == 2
    assert api.requests == []
