"""The demo's scripted workload: valid requests, sent as the right users, and scripts that run.

(`corral demo` itself — processes and all — is covered by the end-to-end tests.)
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
from cli_fakes import NOW, FakeApi

from corral.cli.demo_workload import (
    FAILING_SCRIPT,
    JOBS,
    MEMBERS,
    NOTEBOOK_SCRIPT,
    PROJECTS,
    TRAIN_SCRIPT,
    run_workload,
)
from corral.client import ApiClient


def test_run_workload_creates_everything_and_submits_as_each_user(
    api: FakeApi, tmp_path: Path
) -> None:
    def token_for(request: httpx.Request) -> httpx.Response:
        user = request.url.path.split("/")[-2]
        return httpx.Response(
            201,
            json={
                "user": user,
                "token": f"t-{user}",
                "description": "",
                "created_at": NOW.isoformat(),
            },
        )

    api.on("POST", "/projects", json={})
    api.on("POST", "/users", json={})
    for user in MEMBERS:
        api.on("POST", f"/users/{user}/tokens", handler=token_for)
    for project in PROJECTS:
        api.on("POST", f"/projects/{project}/members", json={})
    api.on("POST", "/jobs", json={}, status=201)
    lines: list[str] = []

    with ApiClient("http://demo", "t-admin", transport=api.transport) as admin:
        files = run_workload(
            admin,
            lambda token: ApiClient("http://demo", token, transport=api.transport),
            token_dir=tmp_path,
            echo=lines.append,
        )

    assert files == {"alice": tmp_path / "alice-token", "bob": tmp_path / "bob-token"}
    assert files["alice"].read_text() == "t-alice\n"
    assert stat.S_IMODE(files["bob"].stat().st_mode) == 0o600
    submitted = [r for r in api.requests if r.url.path == "/api/v1/jobs"]
    assert len(submitted) == len(JOBS) == 15
    for request, job in zip(submitted, JOBS, strict=True):
        body = json.loads(request.content)
        assert body["name"] == job.name
        assert body["project"] in MEMBERS[job.user]  # submitted where the user is a member
        assert request.headers["Authorization"] == f"Bearer t-{job.user}"
    assert "Submitting 15 jobs" in lines


def test_one_job_asks_for_a_whole_node_and_one_fails() -> None:
    assert any(job.gpus == 8 for job in JOBS)
    assert sum(job.gpus == 0.5 for job in JOBS) == 2  # two jobs share a GPU
    assert any(job.workers > 1 for job in JOBS)  # a gang
    assert sum(job.script is FAILING_SCRIPT for job in JOBS) == 1
    assert len({job.name for job in JOBS}) == len(JOBS)


@pytest.mark.parametrize(
    ("script", "code", "last_line"),
    [
        (TRAIN_SCRIPT, 0, "training finished, checkpoint saved"),
        (NOTEBOOK_SCRIPT, 0, "[notebook] cell 3 executed"),
        (FAILING_SCRIPT, 1, "evaluating checkpoint step-12000"),
    ],
)
def test_the_scripts_run_under_plain_sh(script: str, code: int, last_line: str) -> None:
    env = {"EPOCHS": "3", "STEP_SECONDS": "0", "SEED": "7", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)

    assert done.returncode == code, done.stderr
    assert done.stdout.splitlines()[-1] == last_line
    if script is TRAIN_SCRIPT:
        assert "epoch 2/3 loss=2.0" in done.stdout
