"""`corral top` and `corral free`: frames rendered from one ClusterNow with a fixed clock."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
import yaml
from cli_fakes import NOW, FakeApi, Runner, ts

from corral.cli import top as top_module
from corral.cli.top import free_row, layout_for, plain, render_top
from corral.core.gpuview import free_report, short_model
from corral.core.telemetry import ClusterNow

GIB = 1024**3


def job_ref(id: int, name: str, user: str, **fields: Any) -> dict[str, Any]:
    return {"id": id, "name": name, "project": "team-a", "user": user, "rank": 0,
            "share": None, **fields}  # fmt: skip


def sample(index: int, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "index": index,
        "uuid": f"GPU-{index:04d}",
        "utilization_percent": 0.0,
        "memory_used_bytes": 0,
        "memory_total_bytes": 80 * GIB,
        "temperature_celsius": 35.0,
        "power_watts": 60.0,
        "power_limit_watts": 400.0,
    }
    data.update(fields)
    return data


def gpu_now(index: int, model: str = "NVIDIA A100-SXM4-80GB", **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "index": index,
        "uuid": f"GPU-{index:04d}",
        "model": model,
        "memory_bytes": 80 * GIB,
        "jobs": [],
        "unmanaged": None,
        "sample": sample(index),
    }
    data.update(fields)
    return data


def node_now(name: str, gpus: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "state": "ready",
        "pool": "default",
        "simulated": False,
        "last_heartbeat": ts(timedelta(seconds=2)),
        "sampled_at": ts(timedelta(seconds=1)),
        "gpus": gpus,
        "host": {
            "cpu_percent": 23.0,
            "cpu_count": 64,
            "load1": 4.2,
            "memory_used_bytes": 120 * GIB,
            "memory_total_bytes": 512 * GIB,
        },
    }
    data.update(fields)
    return data


DDP = 7  # a gang job: rank 0 on gpu-02, rank 1 on gpu-01
INFER = 9  # a MIG job
UNMANAGED_PROC = {"pid": 4242, "owner": "user", "user": "eve", "command": "python"}

CLUSTER: dict[str, Any] = {
    "at": NOW.isoformat(),
    "nodes": [
        node_now("gpu-01", [
            gpu_now(0, jobs=[job_ref(1, "train-1", "alice")], sample=sample(
                0, utilization_percent=87.0, memory_used_bytes=int(61.2 * GIB),
                temperature_celsius=64.0, power_watts=310.0)),
            gpu_now(1, jobs=[job_ref(2, "tune-a", "bob", share="0.5"),
                             job_ref(3, "tune-b", "carol", share="20GiB")],
                    sample=sample(1, utilization_percent=40.0, temperature_celsius=None)),
            gpu_now(2, jobs=[job_ref(DDP, "ddp", "dave", rank=1)]),
            gpu_now(3, unmanaged="eve (pid 4242 python)",
                    sample=sample(3, utilization_percent=99.0, processes=[UNMANAGED_PROC])),
            gpu_now(4),
        ]),
        node_now("gpu-02", [
            gpu_now(0, "NVIDIA H100 80GB HBM3", jobs=[job_ref(DDP, "ddp", "dave", rank=0)]),
            gpu_now(1, "NVIDIA H100 80GB HBM3",
                    jobs=[job_ref(INFER, "infer", "frank", share="mig 1g.10gb")],
                    sample=sample(1, utilization_percent=None, mig=[
                        {"uuid": "MIG-a", "profile": "1g.10gb", "memory_used_bytes": 3 * GIB,
                         "memory_total_bytes": 10 * GIB, "processes": [
                             {"pid": 11, "owner": "job", "job_id": INFER, "rank": 0}]},
                        {"uuid": "MIG-b", "profile": "1g.10gb", "memory_used_bytes": 1 * GIB,
                         "memory_total_bytes": 10 * GIB, "processes": [
                             {"pid": 77, "owner": "user", "user": "bob", "command": "python"}]},
                        {"uuid": "MIG-c", "profile": "1g.10gb", "memory_used_bytes": 0,
                         "memory_total_bytes": 10 * GIB},
                    ])),
            gpu_now(2, "NVIDIA H100 80GB HBM3"),
        ], pool="fast"),
        node_now("gpu-03", [gpu_now(0, jobs=[job_ref(4, "old", "gina")]), gpu_now(1)],
                 state="not_ready", last_heartbeat=ts(timedelta(minutes=4)),
                 sampled_at=ts(timedelta(minutes=5))),
        node_now("demo-1", [gpu_now(0, "NVIDIA GeForce RTX 4090")], simulated=True),
    ],
}  # fmt: skip


def cluster() -> ClusterNow:
    return ClusterNow.model_validate(CLUSTER)


def frame(width: int | None = None) -> str:
    return plain(render_top(cluster(), NOW, width))


def line_of(text: str, *parts: str) -> str:
    """The one line of ``text`` that contains every one of ``parts``."""
    found = [line for line in text.splitlines() if all(p in line for p in parts)]
    assert len(found) == 1, f"{parts} in {len(found)} lines of:\n{text}"
    return found[0]


# ---------------------------------------------------------------- top


def test_a_frame_shows_each_gpu_with_its_holders() -> None:
    out = frame()

    assert line_of(out, "gpu-01 ").split() == [
        "gpu-01", "ready", "pool", "default", "CPU", "23%", "load", "4.2", "RAM",
        "120/512GiB", "sampled", "1s", "ago",
    ]  # fmt: skip
    assert line_of(out, "train-1").split() == [
        "0", "A100-80GB", "87%", "61.2/80GiB", "64C", "310/400W", "train-1", "(alice)",
    ]  # fmt: skip
    assert "tune-a (bob, 0.5), tune-b (carol, 20GiB)" in out
    assert line_of(out, "tune-a").split()[2:5] == ["40%", "0.0/80GiB", "n/a"]  # temperature
    assert "ddp (dave, rank 1)" in out and "ddp (dave, rank 0)" in out
    assert "UNMANAGED eve (pid 4242 python)" in out
    assert line_of(out, "  4 A100-80GB").endswith("free")


def test_mig_instances_are_indented_under_their_gpu() -> None:
    lines = frame().splitlines()
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("1 H100"))

    assert lines[at].split()[2] == "n/a"  # no utilization in MIG mode: n/a, never 0%
    assert "infer (frank, mig 1g.10gb)" in lines[at]
    instances = lines[at + 1 : at + 4]
    assert all(re.match(r"^ {4}└ MIG 1g\.10gb", line) for line in instances), instances
    assert "3.0/10GiB" in instances[0] and instances[0].endswith("infer (frank, mig 1g.10gb)")
    assert instances[1].endswith("UNMANAGED bob (pid 77 python)")
    assert instances[2].endswith("idle")


def test_a_node_without_fresh_data_says_so_and_shows_no_old_numbers() -> None:
    out = frame()

    header = line_of(out, "gpu-03")
    assert "no data (last heartbeat 4m ago, last sample 5m ago)" in header
    assert "CPU" not in header
    assert line_of(out, "old (gina)").split() == ["0", "A100-80GB", "-", "-", "-", "-",
                                                  "old", "(gina)"]  # fmt: skip


def test_no_sample_at_all_and_simulated_nodes_are_marked() -> None:
    data = json.loads(json.dumps(CLUSTER))
    data["nodes"][3]["sampled_at"] = None
    data["nodes"][3]["last_heartbeat"] = None
    out = plain(render_top(ClusterNow.model_validate(data), NOW))

    assert "demo-1  ready  pool default  SIMULATED  no data (never sent a heartbeat)" in out
    assert "SIMULATED" in line_of(frame(), "demo-1")
    assert line_of(frame(), "RTX4090").endswith("free")


def test_a_gpu_that_cannot_be_read_shows_its_error_and_is_not_free() -> None:
    data = json.loads(json.dumps(CLUSTER))
    data["nodes"][0]["gpus"][4]["sample"] = {"index": 4, "uuid": "GPU-0004",
                                             "error": "GPU is lost"}  # fmt: skip

    line = line_of(plain(render_top(ClusterNow.model_validate(data), NOW)), "  4 A100-80GB")

    assert line.split() == ["4", "A100-80GB", "error:", "GPU", "is", "lost", "-"]


def test_summary_counts_busy_and_unmanaged_gpus() -> None:
    first = frame().splitlines()[0]

    assert first.startswith("4 nodes  7 of 11 GPUs in use (1 unmanaged)  ")

    assert "4 nodes" in first
    assert "7 of 11 GPUs in use (1 unmanaged)" in first


@pytest.mark.parametrize("width", [80, 100, 140])
def test_lines_fit_the_terminal(width: int) -> None:
    lines = render_top(cluster(), NOW, width)

    assert all(line.cell_len <= width for line in lines)
    text = plain(lines)
    assert "train-1 (alice)" in text  # holders survive at 80 columns
    assert ("█" in text) == (layout_for(width).bar > 0)
    assert ("310/400W" in text) == layout_for(width).power


def test_short_model_names() -> None:
    assert short_model("NVIDIA A100-SXM4-80GB") == "A100-80GB"
    assert short_model("NVIDIA A100 80GB PCIe") == "A100-80GB"
    assert short_model("NVIDIA GeForce RTX 4090") == "RTX4090"
    assert short_model("NVIDIA RTX A6000") == "RTX-A6000"
    assert short_model("NVIDIA H100 80GB HBM3") == "H100-80GB"
    assert short_model("Tesla V100-SXM2-32GB") == "V100-32GB"
    assert short_model("NVIDIA H100 NVL") == "H100-NVL"


def test_top_once_into_a_pipe_is_plain_text(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/metrics/now", json=CLUSTER)

    result = run("top", "--once")

    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout
    assert "UNMANAGED eve (pid 4242 python)" in result.stdout
    assert result.stdout.rstrip() == frame()


def test_top_filters_nodes_and_prints_json(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/metrics/now", json=CLUSTER)

    once = run("top", "--once", "--node", "gpu-02", "--node", "demo-1")
    as_json = json.loads(run("top", "-o", "json", "--node", "gpu-02").stdout)
    as_yaml = yaml.safe_load(run("top", "-o", "yaml").stdout)

    assert once.exit_code == 0, once.output
    assert "gpu-02" in once.stdout and "demo-1" in once.stdout and "gpu-01" not in once.stdout
    assert [n["name"] for n in as_json["nodes"]] == ["gpu-02"]
    assert ClusterNow.model_validate(as_yaml) == cluster()


def test_top_with_an_unknown_node_is_an_error(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/metrics/now", json=CLUSTER)

    result = run("top", "--once", "--node", "gpu-99")

    assert result.exit_code == 1
    assert "no node named gpu-99" in result.stderr


def test_top_into_a_pipe_prints_frames_until_ctrl_c(
    run: Runner, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.on("GET", "/metrics/now", json=CLUSTER)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("corral.cli.top.time.sleep", sleep)

    result = run("top", "--interval", "5s")

    assert result.exit_code == 0, result.output  # Ctrl-C is how one leaves: not an error
    assert sleeps == [5.0, 5.0]
    assert result.stdout.count("gpu-01  ready") == 2
    assert "\x1b" not in result.stdout


def test_top_on_a_terminal_redraws_and_shows_a_lost_server(
    run: Runner, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([httpx.Response(200, json=CLUSTER)])

    def now(request: httpx.Request) -> httpx.Response:
        answer = next(answers, None)
        if answer is None:
            raise httpx.ConnectError("connection refused")
        return answer

    api.on("GET", "/metrics/now", handler=now)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("corral.cli.top.time.sleep", sleep)
    monkeypatch.setattr(top_module, "stdout_is_terminal", lambda: True)

    result = run("top")

    assert result.exit_code == 0, result.output
    assert len(api.requests) == 2  # the second fetch failed: the frame says so, no crash
    assert "lost the connection" in result.stdout or "cannot reach" in result.stdout
    assert "retrying" in result.stdout
    assert "every 2s, Ctrl-C to quit" in result.stdout
    assert "train-1 (alice)" in result.stdout  # the last good data stays on screen


def test_top_refuses_a_tiny_interval(run: Runner, api: FakeApi) -> None:
    result = run("top", "--interval", "10ms")

    assert result.exit_code == 2
    assert api.requests == []


# ---------------------------------------------------------------- free


def test_free_counts_idle_gpus_shared_room_and_mig_instances() -> None:
    report = free_report(cluster())
    by_node = {n.node: n for n in report.nodes}

    assert set(by_node) == {"gpu-01", "gpu-02", "demo-1"}  # gpu-03 is not ready
    assert report.not_ready == {"gpu-03": "not_ready"}
    assert by_node["gpu-01"].free_gpus == [4]  # 3 is used outside Corral
    [shared] = by_node["gpu-01"].shared
    assert (shared.gpu, shared.free_memory_bytes) == (1, 80 * GIB - 40 * GIB - 20 * GIB)
    assert by_node["gpu-02"].free_gpus == [2]
    [mig] = by_node["gpu-02"].mig  # 3 instances: one held by a job, one used by bob
    assert (mig.gpu, mig.profile, mig.free) == (1, "1g.10gb", 1)
    assert report.free_gpus == 3


def test_free_table(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/metrics/now", json=CLUSTER)

    result = run("free")

    assert result.exit_code == 0, result.output
    rows = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()]
    assert rows[0] == ["NODE", "POOL", "FREE GPUS", "MODEL", "MEMORY", "SHARED / MIG"]
    assert rows[1] == ["gpu-01", "default", "1 (4)", "A100-80GB", "80GiB",
                       "GPU 1: 20GiB free (shared, 2 jobs)"]  # fmt: skip
    assert rows[2] == ["gpu-02", "fast", "1 (2)", "H100-80GB", "80GiB",
                       "GPU 1: MIG 1x 1g.10gb free"]  # fmt: skip
    assert rows[3][:3] == ["demo-1", "default", "1 (0)"]
    assert "Total: 3 free GPUs on 3 nodes; 1 shared GPU with room; 1 free MIG instance" in (
        result.stdout
    )
    assert "Not ready, not counted: gpu-03 (not_ready)" in result.stdout


def test_free_json(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/metrics/now", json=CLUSTER)

    data = json.loads(run("free", "-o", "json").stdout)

    assert data["free_gpus"] == 3
    assert data["nodes"][0]["shared"] == [
        {"gpu": 1, "memory_bytes": 80 * GIB, "free_memory_bytes": 20 * GIB, "jobs": 2}
    ]


def test_a_shared_gpu_with_an_unreadable_share_has_unknown_room() -> None:
    data = json.loads(json.dumps(CLUSTER))
    data["nodes"][0]["gpus"][1]["jobs"][1]["share"] = "a lot"

    node = free_report(ClusterNow.model_validate(data)).nodes[0]

    assert node.shared[0].free_memory_bytes is None
    assert free_row(node)[-1] == "GPU 1: room unknown free (shared, 2 jobs)"
