"""`corral submit`: argument parsing, client-side checks, and the request it sends."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from cli_fakes import FakeApi, Runner, job

from corral.cli.params import parse_duration


@pytest.fixture
def accepts(api: FakeApi) -> FakeApi:
    """POST /jobs answers 201 with the job built from the request."""

    def created(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        return httpx.Response(
            201,
            json=job(
                body["name"],
                body["project"],
                state="pending",
                node=None,
                gpu_ids=[],
                gpu_uuids=[],
                reason="waiting for 2 free GPUs on one node",
            ),
        )

    api.on("POST", "/jobs", handler=created)
    return api


def test_the_documented_example_sends_the_command_after_dashes_verbatim(
    run: Runner, accepts: FakeApi
) -> None:
    result = run(
        "submit",
        "train-1",
        "-p",
        "team-a",
        "-g",
        "2",
        "--",
        "python",
        "train.py",
        "--epochs",
        "10",
        "-p",
        "5",
    )

    assert result.exit_code == 0, result.output
    body = accepts.body("POST", "/jobs")
    assert body["name"] == "train-1"
    assert body["project"] == "team-a"
    assert body["gpus"] == 2
    assert body["kind"] == "train"
    assert body["command"] == ["python", "train.py", "--epochs", "10", "-p", "5"]
    assert "Job train-1 submitted to project team-a." in result.stdout
    assert "State: pending (waiting for 2 free GPUs on one node)" in result.stdout


def test_every_option_reaches_the_request(run: Runner, accepts: FakeApi) -> None:
    result = run(
        "submit", "nb", "--cpus", "2.5", "--memory", "16GiB", "-e", "A=1", "-e", "B=x=y",
        "-e", "EMPTY=", "--workdir", "/scratch/nb", "--interactive", "--grace-period", "1m30s",
        "--", "jupyter", "lab",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    body = accepts.body("POST", "/jobs")
    assert body["cpus"] == 2.5
    assert body["memory_bytes"] == 16 * 1024**3
    assert body["env"] == {"A": "1", "B": "x=y", "EMPTY": ""}
    assert body["workdir"] == "/scratch/nb"
    assert body["kind"] == "interactive"
    assert body["grace_seconds"] == 90
    assert body["command"] == ["jupyter", "lab"]


def test_a_command_without_dashes_is_fine_when_it_has_no_options(
    run: Runner, accepts: FakeApi
) -> None:
    result = run("submit", "hello", "-g", "1", "echo", "hi")

    assert result.exit_code == 0, result.output
    assert accepts.body("POST", "/jobs")["command"] == ["echo", "hi"]


def test_project_comes_from_the_current_project_then_default(
    run: Runner, accepts: FakeApi, home: Path
) -> None:
    run("submit", "a", "--", "true")
    assert accepts.body("POST", "/jobs")["project"] == "default"

    (home / "config.json").write_text(json.dumps({"project": "team-b"}))
    run("submit", "b", "--", "true")
    assert accepts.body("POST", "/jobs")["project"] == "team-b"

    run("submit", "c", "-p", "team-c", "--", "true")
    assert accepts.body("POST", "/jobs")["project"] == "team-c"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "12XB"], "'--memory': '12XB' is not a size"),
        (["--memory", "0"], "'--memory': must be more than zero"),
        (["-e", "NOVALUE"], "'--env': 'NOVALUE' is not in KEY=VALUE form"),
        (["-e", "=v"], "'--env': '=v' is not in KEY=VALUE form"),
        (["-e", "CUDA_VISIBLE_DEVICES=0"], "--env: CUDA_VISIBLE_DEVICES is set by Corral"),
        (["-e", "1BAD=x"], "--env: '1BAD' is not a valid variable name"),
        (["--grace-period", "soon"], "'--grace-period': 'soon' is not a duration"),
        (["-g", "-1"], "'--gpus'"),
        (["-g", "1.5"], "--gpus: 1.5 GPUs: a job gets whole GPUs, or a fraction below 1"),
        (["--cpus", "0"], "'--cpus'"),
        (["--workdir", "relative/dir"], "--workdir: must be an absolute path"),
        (["--kind", "batch"], "'--kind'"),
        (["--kind", "train", "--interactive"], "--interactive conflicts with --kind train"),
        (["-p", "Team_A"], "'--project'"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(
    run: Runner, api: FakeApi, args: list[str], message: str
) -> None:
    result = run("submit", "job-1", *args, "--", "true")

    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert api.requests == []  # nothing was sent


def test_a_bad_job_name_is_a_usage_error(run: Runner, api: FakeApi) -> None:
    result = run("submit", "My_Job", "--", "true")

    assert result.exit_code == 2
    assert "Invalid value for 'NAME': 'My_Job' is not a valid job name" in result.stderr


def test_a_missing_command_is_a_usage_error(run: Runner, api: FakeApi) -> None:
    result = run("submit", "job-1", "-g", "1", "--")

    assert result.exit_code == 2
    assert "missing the command to run" in result.stderr


def test_options_after_an_undashed_command_are_refused_not_stolen(
    run: Runner, api: FakeApi
) -> None:
    # Without the check, "-p 5" would silently become Corral's --project.
    result = run("submit", "job-1", "python", "train.py", "-p", "5")

    assert result.exit_code == 2
    assert "put the whole command after `--`" in result.stderr
    assert api.requests == []


def test_an_unknown_option_suggests_dashes(run: Runner, api: FakeApi) -> None:
    result = run("submit", "job-1", "python", "train.py", "--epochs", "3")

    assert result.exit_code == 2
    assert "No such option '--epochs'" in result.stderr
    assert "put the command after `--`" in result.stderr


def test_json_output_prints_the_created_job(run: Runner, accepts: FakeApi) -> None:
    result = run("submit", "j", "-o", "json", "--", "true")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "j"


def test_server_side_refusal_is_an_error_line(run: Runner, api: FakeApi) -> None:
    api.on(
        "POST",
        "/jobs",
        status=409,
        json={"error": {"code": "already_exists", "message": "job team-a/j exists already"}},
    )

    result = run("submit", "j", "-p", "team-a", "--", "true")

    assert result.exit_code == 1
    assert result.stderr == "error: job team-a/j exists already\n"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45", 45), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400), ("2d", 172800),
     ("250ms", 0.25), (" 10S ", 10)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5 m", "5x", "-5s", "1h-30m", "m5"])
def test_parse_duration_refuses_junk(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_shares_mig_and_gangs_reach_the_request(run: Runner, accepts: FakeApi) -> None:
    assert run("submit", "half", "-g", "0.5", "--", "x").exit_code == 0
    assert accepts.body("POST", "/jobs")["gpus"] == 0.5
    assert run("submit", "mem", "--gpu-memory", "20GiB", "--", "x").exit_code == 0
    body = accepts.body("POST", "/jobs")
    assert body["gpu_memory_bytes"] == 20 * 1024**3 and body["gpus"] == 0
    assert run("submit", "tiny", "--mig", "1g.10gb", "--", "x").exit_code == 0
    assert accepts.body("POST", "/jobs")["mig_profile"] == "1g.10gb"
    assert run("submit", "gang", "-g", "8", "--workers", "4", "--", "x").exit_code == 0
    body = accepts.body("POST", "/jobs")
    assert (body["gpus"], body["workers"]) == (8, 4)


@pytest.mark.parametrize(
    ("args", "option", "fragment"),
    [
        (["-g", "1.5"], "--gpus", "fraction below 1"),
        (["-g", "0.5", "--gpu-memory", "10GiB"], "--gpu-memory", "only one of"),
        (["-g", "0.5", "--workers", "2"], "--workers", "whole GPUs"),
        (["--mig", "big"], "--mig", "pattern"),
    ],
)
def test_bad_device_requests_are_refused_naming_the_option(
    run: Runner, accepts: FakeApi, args: list[str], option: str, fragment: str
) -> None:
    result = run("submit", "x", *args, "--", "x")
    assert result.exit_code == 2
    assert option in result.stderr and fragment in result.stderr
    assert not [r for r in accepts.requests if r.method == "POST"]


def test_container_options_reach_the_request(run: Runner, accepts: FakeApi) -> None:
    result = run(
        "submit", "pt", "--image", "nvcr.io/nvidia/pytorch:24.01-py3", "-g", "2",
        "--memory", "64GiB", "--large-shm", "--volume", "datasets:/data:ro",
        "--volume", "/scratch:/scratch", "--root", "--", "python", "train.py",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    body = accepts.body("POST", "/jobs")
    assert body["image"] == "nvcr.io/nvidia/pytorch:24.01-py3"
    assert body["shm_size_bytes"] == 64 * 1024**3  # --large-shm: as large as --memory
    assert body["volumes"] == [
        {"source": "datasets", "target": "/data", "read_only": True},
        {"source": "/scratch", "target": "/scratch", "read_only": False},
    ]
    assert body["run_as_root"] is True


def test_a_container_job_may_run_its_images_own_command(run: Runner, accepts: FakeApi) -> None:
    result = run("submit", "nb", "--image", "jupyter/base-notebook:2024", "--port", "8888")
    assert result.exit_code == 0, result.output
    body = accepts.body("POST", "/jobs")
    assert body["command"] == [] and body["image"] == "jupyter/base-notebook:2024"
    plain = run("submit", "x")
    assert plain.exit_code == 2 and "missing the command to run" in plain.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--image", "busybox", "--large-shm"], "give --memory too"),
        (["--image", "busybox", "--large-shm", "--shm-size", "1GiB"], "not both"),
        (["--image", "busybox", "--volume", "data"], "NAME:/path/in/job"),
        (["--image", "busybox", "--volume", "data:relative"], "NAME:/path/in/job"),
        (["--volume", "data:/data"], "only for container jobs"),
        (["--image", "Busy Box"], "--image"),
    ],
)
def test_container_mistakes_are_caught_before_sending(
    run: Runner, api: FakeApi, args: list[str], words: str
) -> None:
    result = run("submit", "x", *args, "--", "true")
    assert result.exit_code == 2, result.output
    assert words in result.output, result.output
