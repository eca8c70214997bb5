"""`corral nodes` and `corral node NAME`."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import yaml
from cli_fakes import NOW, FakeApi, Runner, gpu, node, ts

from corral.cli.nodes import drift
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


def serve_node(api: FakeApi, data: dict[str, Any], *others: dict[str, Any]) -> None:
    """``GET /nodes/NAME`` and ``GET /nodes``; no ``/metrics/now`` (an older server)."""
    api.on("GET", f"/nodes/{data['name']}", json=data)
    api.on("GET", "/nodes", json={"nodes": [data, *others]})


def test_node_details_list_gpus_and_jobs(run: Runner, api: FakeApi) -> None:
    serve_node(api, REAL)

    result = run("node", "gpu-01")

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"^GPUs:\s+3/8 allocated$", out, re.MULTILINE)
    assert re.search(r"^Driver:\s+550.54.15$", out, re.MULTILINE)
    assert re.search(r"^INDEX\s+UUID\s+MODEL\s+MEMORY$", out, re.MULTILINE)
    assert re.search(r"^7\s+GPU-0007\s+A100-80GB\s+80GiB$", out, re.MULTILINE)
    assert "Jobs: team-a/train-1" in out


def test_simulated_node_details_say_so(run: Runner, api: FakeApi) -> None:
    serve_node(api, SIM)

    result = run("node", "demo-node-3")

    assert re.search(r"^GPU backend:\s+simulated$", result.stdout, re.MULTILINE)
    assert "GPUs: (simulated)" in result.stdout


def test_node_names_may_have_dots(run: Runner, api: FakeApi) -> None:
    serve_node(api, node("gpu01.lab.example"))

    result = run("node", "gpu01.lab.example", "-o", "json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "gpu01.lab.example"
    assert "GPUs: none" in run("node", "gpu01.lab.example").stdout


def test_a_bad_node_name_is_a_usage_error(run: Runner, api: FakeApi) -> None:
    result = run("node", "../etc")

    assert result.exit_code == 2
    assert api.requests == []


# ---------------------------------------------------------------- driver / CUDA drift

FLEET = [node(f"gpu-{i:02d}") for i in range(1, 8)]  # 550.54.15 / 12.4
ODD = node("gpu-08", driver_version="535.104.05", cuda_version="12.2")


def test_drift_is_judged_against_the_most_common_version() -> None:
    versions = ["550", "550", "535", None]

    assert drift("535", versions) == "differs from 550 on 2 of 3 nodes"
    assert drift("550", versions) is None
    assert drift(None, versions) is None  # no version (simulated): nothing to compare
    assert drift("535", ["550", "535"]) is None  # a tie is no majority


def test_nodes_table_flags_drift_with_a_footnote(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/nodes", json={"nodes": [*FLEET, ODD, SIM]})

    result = run("nodes")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert cells(lines[1])[6:8] == ["550.54.15", "12.4"]
    assert cells(lines[8])[6:8] == ["535.104.05*", "12.2*"]
    assert cells(lines[9])[6:8] == ["-", "-"]  # simulated: no driver, no flag
    assert lines[-1] == (
        "* not the version most nodes run: driver 550.54.15 (7 of 8 nodes), "
        "CUDA 12.4 (7 of 8 nodes)"
    )


def test_nodes_table_has_no_footnote_without_drift(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/nodes", json={"nodes": FLEET})

    assert "*" not in run("nodes").stdout


def test_node_details_flag_drift(run: Runner, api: FakeApi) -> None:
    serve_node(api, ODD, *FLEET)

    out = run("node", "gpu-08").stdout

    assert re.search(
        r"^Driver:\s+535.104.05 \(differs from 550.54.15 on 7 of 8 nodes\)$", out, re.MULTILINE
    )
    assert re.search(r"^CUDA:\s+12.2 \(differs from 12.4 on 7 of 8 nodes\)$", out, re.MULTILINE)
    assert "Newest sample: not available from this server" in out


def test_node_details_show_pool_address_mig_and_the_newest_sample(
    run: Runner, api: FakeApi
) -> None:
    mig = {"uuid": "MIG-1", "profile": "1g.10gb", "gpu_instance_id": 7,
           "compute_instance_id": 0, "compute_slices": 1, "memory_bytes": 10 * 1024**3}  # fmt: skip
    data = node("gpu-01", gpus=[{**gpu(0), "mig": [mig]}], address="10.0.0.1", pool="fast")
    serve_node(api, data, *FLEET)
    api.on("GET", "/metrics/now", json={"at": NOW.isoformat(), "nodes": [{
        "name": "gpu-01", "state": "ready", "pool": "fast", "simulated": False,
        "last_heartbeat": ts(timedelta(seconds=2)), "sampled_at": ts(timedelta(seconds=1)),
        "gpus": [{"index": 0, "uuid": "GPU-0000", "model": "A100-80GB",
                  "memory_bytes": 80 * 1024**3, "jobs": [], "unmanaged": None,
                  "sample": {"index": 0, "uuid": "GPU-0000", "utilization_percent": 12.0,
                             "memory_used_bytes": 0, "memory_total_bytes": 80 * 1024**3,
                             "temperature_celsius": None}}],
        "host": {"cpu_percent": 23.0, "cpu_count": 64, "load1": 4.2,
                 "memory_used_bytes": 120 * 1024**3, "memory_total_bytes": 512 * 1024**3,
                 "net_rx_bytes_per_s": 1024**2, "filesystems": [
                     {"mount": "/", "used_bytes": 100 * 1024**3, "total_bytes": 1024**4}]},
    }]})  # fmt: skip

    result = run("node", "gpu-01")

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"^Pool:\s+fast$", out, re.MULTILINE)
    assert re.search(r"^Address:\s+10.0.0.1$", out, re.MULTILINE)
    assert re.search(r"^└\s+MIG-1\s+MIG 1g.10gb\s+10GiB$", out, re.MULTILINE)
    assert "Newest sample (1s ago):" in out
    assert re.search(r"^CPU:\s+23% of 64 cores \(load 4.2\)$", out, re.MULTILINE)
    assert re.search(r"^Memory:\s+120/512GiB$", out, re.MULTILINE)
    assert re.search(r"^Network:\s+rx 1MiB/s, tx n/a$", out, re.MULTILINE)
    assert re.search(r"^Filesystems:\s+/  100GiB/1TiB$", out, re.MULTILINE)
    assert re.search(r"^GPUs now:\n  0 A100-80GB\s+12%\s+0.0/80GiB\s+n/a", out, re.MULTILINE)
