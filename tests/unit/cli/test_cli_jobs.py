"""`corral list`, `get`, `logs` and `delete`: rendering and job-name resolution."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from cli_fakes import FakeApi, Runner, job, job_detail, ts

from corral.core.schemas import JobOut

JOBS = [
    job("train-1", "team-a"),
    job(
        "big-one", "team-b", user="bob", state="pending", node=None, gpus=8.0, gpu_ids=[],
        gpu_uuids=[], started_at=None, reason="waiting for 8 free GPUs on one node",
        created_at=ts(timedelta(seconds=42)),
    ),
    job(
        "eval", "team-b", user="bob", state="failed", gpus=1.0, gpu_ids=[3],
        exit_code=1, reason="exited with code 1", finished_at=ts(timedelta(minutes=1)),
    ),
    job("done", "team-a", state="succeeded", reason="this reason is not shown"),
]  # fmt: skip


def rows(stdout: str) -> list[list[str]]:
    """Split plain table output into cells (runs of 2+ spaces separate them)."""
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if line.strip()]


def field(out: str, label: str) -> str:
    """The value of ``Label:  value`` in a detail block."""
    match = re.search(rf"^{re.escape(label)}:\s+(.*)$", out, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{out}"
    return match.group(1)


def test_list_prints_a_plain_table_with_every_column(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/jobs", json={"jobs": JOBS})

    result = run("list")

    assert result.exit_code == 0, result.output
    table = rows(result.stdout)
    assert table[0] == ["NAME", "PROJECT", "USER", "KIND", "STATE", "NODE", "GPUS", "AGE",
                        "REASON"]  # fmt: skip
    assert table[1] == ["train-1", "team-a", "alice", "train", "running", "node-1", "2 (0,1)",
                        "5m"]  # fmt: skip
    assert table[2] == ["big-one", "team-b", "bob", "train", "pending", "-", "8", "42s",
                        "waiting for 8 free GPUs on one node"]  # fmt: skip
    assert table[3][-3:] == ["1 (3)", "5m", "exited with code 1"]
    assert "this reason is not shown" not in result.stdout
    assert "\x1b[" not in result.stdout  # no colour codes into a pipe
    assert api.last("GET", "/jobs").url.params["all"] == "false"


def test_list_passes_filters_and_all(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/jobs", json={"jobs": []})

    result = run("list", "-p", "team-a", "--user", "bob", "--state", "PENDING", "-A")

    assert result.exit_code == 0
    params = api.last("GET", "/jobs").url.params
    assert dict(params) == {"project": "team-a", "user": "bob", "state": "pending", "all": "true"}
    assert result.stdout == ""
    assert "No jobs found." in result.stderr


def test_list_rejects_an_unknown_state(run: Runner, api: FakeApi) -> None:
    result = run("list", "--state", "sleeping")

    assert result.exit_code == 2
    assert "'--state'" in result.stderr


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_list_json_and_yaml_print_the_api_objects(run: Runner, api: FakeApi, fmt: str) -> None:
    api.on("GET", "/jobs", json={"jobs": JOBS})

    result = run("list", "-o", fmt)

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout) if fmt == "json" else yaml.safe_load(result.stdout)
    assert data == JOBS
    assert set(JobOut.model_fields) <= set(data[0])


def test_get_shows_a_container_jobs_image_volumes_and_shared_memory(
    run: Runner, api: FakeApi
) -> None:
    container = {
        "image": "nvcr.io/nvidia/pytorch:24.01-py3",
        "shm_size_bytes": 8 * 1024**3,
        "mounts": [
            {"source": "/srv/d", "target": "/data", "read_only": True, "volume": "datasets"},
            {"source": "/scratch", "target": "/scratch", "read_only": False, "volume": None},
        ],
        "run_as_root": False,
    }
    api.on("GET", "/jobs", json={"jobs": [job(container=container)]})
    api.on("GET", "/jobs/team-a/train-1", json=job_detail(container=container))
    result = run("get", "train-1")
    assert result.exit_code == 0, result.output
    assert field(result.stdout, "Image") == "nvcr.io/nvidia/pytorch:24.01-py3"
    assert field(result.stdout, "Volumes") == "datasets → /data (read-only)"
    assert "/scratch → /scratch" in result.stdout
    assert field(result.stdout, "Shared memory") == "8GiB"
    # A host process has none of these rows.
    api.on("GET", "/jobs/team-a/train-1", json=job_detail())
    assert "Image:" not in run("get", "train-1").stdout


def test_get_renders_every_field_and_the_events(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/jobs", json={"jobs": [job()]})
    api.on("GET", "/jobs/team-a/train-1", json=job_detail())

    result = run("get", "train-1")

    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in [
        "Name:", "train-1", "Project:", "team-a", "User:", "alice", "Kind:", "train",
        "State:", "running", "Node:", "node-1", "GPUs:", "2 (0,1)", "GPU-aaaa", "GPU-bbbb",
        "CPUs:", "4", "Memory:", "16GiB", "Command:", "python train.py --epochs 10",
        "Workdir:", "/home/alice/proj", "Created:", "(5m ago)", "Started:", "(4m ago)",
        "Run time:", "4m", "Exit code:", "Attempt:", "1", "Env:", "EPOCHS",
        "Events:", "TIME", "TYPE", "MESSAGE", "submitted", "by alice", "pid 4242",
    ]:  # fmt: skip
        assert expected in out, expected
    assert field(out, "Finished") == "-"
    assert field(out, "Exit code") == "-"
    assert field(out, "Env") == "EPOCHS (values: -o yaml)"


def test_get_of_a_finished_job_shows_its_run_time_and_exit_code(run: Runner, api: FakeApi) -> None:
    detail = job_detail(
        state="failed", started_at=ts(timedelta(minutes=4)),
        finished_at=ts(timedelta(minutes=1)), exit_code=1, reason="exited with code 1",
    )  # fmt: skip
    api.on("GET", "/jobs/team-a/train-1", json=detail)

    result = run("get", "train-1", "-p", "team-a")

    assert result.exit_code == 0, result.output
    assert field(result.stdout, "Run time") == "3m"
    assert field(result.stdout, "Exit code") == "1"
    assert field(result.stdout, "Reason") == "exited with code 1"
    assert field(result.stdout, "Finished").endswith("(1m ago)")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_get_json_and_yaml_print_the_object(run: Runner, api: FakeApi, fmt: str) -> None:
    api.on("GET", "/jobs/team-a/train-1", json=job_detail())

    result = run("get", "train-1", "-p", "team-a", "-o", fmt)

    assert result.exit_code == 0
    data = json.loads(result.stdout) if fmt == "json" else yaml.safe_load(result.stdout)
    assert data == job_detail()


# ---------------------------------------------------------------- name resolution


def test_a_unique_name_resolves_to_its_project(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/jobs", json={"jobs": [job("x", "team-b")]})
    api.on("GET", "/jobs/team-b/x", json=job_detail("x", "team-b"))

    result = run("get", "x")

    assert result.exit_code == 0, result.output
    assert api.last("GET", "/jobs").url.params["name"] == "x"


def test_an_ambiguous_name_needs_project(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/jobs", json={"jobs": [job("x", "team-b"), job("x", "team-a")]})

    result = run("get", "x")

    assert result.exit_code == 1
    assert result.stderr == "error: job x exists in projects team-a, team-b: use --project\n"


def test_an_ambiguous_name_prefers_the_current_project(
    run: Runner, api: FakeApi, home: Path
) -> None:
    (home / "config.json").write_text(json.dumps({"project": "team-b"}))
    api.on("GET", "/jobs", json={"jobs": [job("x", "team-a"), job("x", "team-b")]})
    api.on("DELETE", "/jobs/team-b/x", json=job("x", "team-b", state="stopping"))

    result = run("delete", "x")

    assert result.exit_code == 0, result.output
    assert result.stdout == "Job x is stopping (SIGTERM, then SIGKILL after 30s).\n"


def test_an_unknown_job_is_not_found(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/jobs", json={"jobs": []})

    result = run("logs", "ghost")

    assert result.exit_code == 1
    assert result.stderr == "error: job 'ghost' not found\n"
    # Deleted jobs were looked at before giving up.
    assert [r.url.params["all"] for r in api.requests] == ["false", "true"]


def test_a_deleted_job_is_found_when_no_live_one_has_the_name(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/jobs", json={"jobs": []}, query={"all": "false"})
    api.on("GET", "/jobs", json={"jobs": [job("old", "team-a", deleted=True)]},
           query={"all": "true"})  # fmt: skip
    api.on("GET", "/jobs/team-a/old", json=job_detail("old", state="stopped", deleted=True))

    result = run("get", "old")

    assert result.exit_code == 0, result.output
    assert "stopped (deleted)" in result.stdout


def test_with_project_no_resolution_is_made(run: Runner, api: FakeApi) -> None:
    api.on("DELETE", "/jobs/team-a/x", json=job("x", state="stopped", deleted=True))

    result = run("delete", "x", "-p", "team-a")

    assert result.exit_code == 0
    assert result.stdout == "Job x deleted.\n"
    assert [r.method for r in api.requests] == ["DELETE"]


def test_with_project_a_missing_job_reports_the_servers_message(run: Runner, api: FakeApi) -> None:
    api.on(
        "GET", "/jobs/team-a/x", status=404,
        json={"error": {"code": "not_found", "message": "job 'x' not found in team-a"}},
    )  # fmt: skip

    result = run("get", "x", "-p", "team-a")

    assert result.exit_code == 1
    assert result.stderr == "error: job 'x' not found in team-a\n"


# ---------------------------------------------------------------- logs


def test_logs_writes_the_bytes_as_they_come(run: Runner, api: FakeApi) -> None:
    output = b"epoch 1/3 loss=0.9\n\xffbinary\nepoch 2/3 loss=0.5\n"
    api.on(
        "GET",
        "/jobs/team-a/train-1/logs",
        handler=lambda request: httpx.Response(200, content=output),
    )

    result = run("logs", "train-1", "-p", "team-a", "-f")

    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == output
    assert api.last("GET", "/jobs/team-a/train-1/logs").url.params["follow"] == "true"


def test_logs_without_follow_asks_for_no_follow(run: Runner, api: FakeApi) -> None:
    api.on("GET", "/jobs/team-a/train-1/logs", handler=lambda r: httpx.Response(200))

    result = run("logs", "train-1", "-p", "team-a")

    assert result.exit_code == 0
    assert api.last("GET", "/jobs/team-a/train-1/logs").url.params["follow"] == "false"


def test_logs_rank_picks_a_worker_of_a_gang(run: Runner, api: FakeApi) -> None:
    outputs = {"0": b"worker zero\n", "3": b"worker three\n"}
    api.on(
        "GET",
        "/jobs/team-a/big/logs",
        handler=lambda r: httpx.Response(200, content=outputs[r.url.params["rank"]]),
    )

    result = run("logs", "big", "-p", "team-a", "--rank", "3")

    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == b"worker three\n"
    assert api.last("GET", "/jobs/team-a/big/logs").url.params["rank"] == "3"
    default = run("logs", "big", "-p", "team-a")
    assert default.stdout_bytes == b"worker zero\n"  # rank 0 unless told otherwise


def test_logs_refuses_a_negative_rank(run: Runner, api: FakeApi) -> None:
    result = run("logs", "big", "-p", "team-a", "--rank", "-1")

    assert result.exit_code == 2
    assert "--rank" in result.stderr
    assert api.requests == []


def test_logs_ctrl_c_exits_quietly_with_130(run: Runner, api: FakeApi) -> None:
    class Interrupted(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b"epoch 1\n"
            raise KeyboardInterrupt

    api.on(
        "GET",
        "/jobs/team-a/train-1/logs",
        handler=lambda request: httpx.Response(200, stream=Interrupted()),
    )

    result = run("logs", "train-1", "-p", "team-a", "-f")

    assert result.exit_code == 130
    assert result.stdout == "epoch 1\n"
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("fields", "cell"),
    [
        ({"gpus": 0.5, "gpu_ids": [3]}, "0.5 (3)"),
        ({"gpus": 0, "gpu_memory_bytes": 20 * 1024**3, "gpu_ids": [3]}, "20GiB (3)"),
        ({"gpus": 0, "mig_profile": "1g.10gb", "gpu_ids": [0]}, "mig 1g.10gb (0)"),
        ({"gpus": 0.5, "gpu_ids": [], "node": None, "state": "pending"}, "0.5 (not bound yet)"),
    ],
)
def test_get_shows_what_a_shared_or_mig_job_asked_for_and_got(
    run: Runner, api: FakeApi, fields: dict[str, object], cell: str
) -> None:
    api.on("GET", "/jobs/team-a/train-1", json=job_detail(**fields))
    result = run("get", "train-1", "-p", "team-a")
    assert result.exit_code == 0, result.output
    assert field(result.stdout, "GPUs") == cell


def test_get_of_a_gang_lists_its_workers(run: Runner, api: FakeApi) -> None:
    workers = [
        {"rank": 0, "node": "node-1", "gpu_ids": [0, 1], "state": "running", "pid": 11,
         "exit_code": None},
        {"rank": 1, "node": "node-2", "gpu_ids": [4, 5], "state": "exited", "pid": 12,
         "exit_code": 0},
    ]  # fmt: skip
    api.on("GET", "/jobs/team-a/train-1", json=job_detail(workers=2, worker_list=workers))
    result = run("get", "train-1", "-p", "team-a")
    assert result.exit_code == 0, result.output
    assert field(result.stdout, "GPUs") == "2x2"
    assert field(result.stdout, "Node") == "node-1 +1"
    rows = result.stdout.split("Workers:")[1].split("Events:")[0].strip().splitlines()
    assert rows[0].split() == ["RANK", "NODE", "GPUS", "STATE", "PID", "EXIT", "CODE"]
    assert rows[1].split() == ["0", "node-1", "0,1", "running", "11", "-"]
    assert rows[2].split() == ["1", "node-2", "4,5", "exited", "12", "0"]


def test_queue_shows_order_shapes_and_reasons(run: Runner, api: FakeApi) -> None:
    def entry(position: int, name: str, **fields: object) -> dict[str, object]:
        return {
            "position": position, "name": name, "project": "team-a", "user": "alice",
            "kind": "train", "priority": 0, "gpus": 0, "waiting_seconds": 125,
            "reason": "waiting for reclaim", **fields,
        }  # fmt: skip

    api.on(
        "GET",
        "/queue",
        json={
            "jobs": [
                entry(1, "gang", gpus=4, workers=2, reason="gang needs 2 nodes with 4 free GPUs"),
                entry(2, "half", gpus=0.5),
                entry(3, "mem", gpu_memory_bytes=20 * 1024**3),
                entry(4, "tiny", mig_profile="1g.10gb", reason=None),
            ]
        },
    )
    result = run("queue")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "#", "NAME", "PROJECT", "USER", "KIND", "PRIORITY", "GPUS", "WAITING", "REASON",
    ]  # fmt: skip
    assert lines[1].split()[:7] == ["1", "gang", "team-a", "alice", "train", "0", "2x4"]
    assert lines[1].endswith("gang needs 2 nodes with 4 free GPUs")
    assert [line.split()[6] for line in lines[2:5]] == ["0.5", "20GiB", "mig"]
    assert "1g.10gb" in lines[4] and lines[4].rstrip().endswith("-")
