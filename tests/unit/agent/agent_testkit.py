"""Helpers for the agent's tests: assignment factory, polling with a deadline, cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from corral.agent.runtime.cgroups import JobCgroup
from corral.agent.usermap import JobAccount
from corral.core.schemas import Assignment

T = TypeVar("T")

_ME = pwd.getpwuid(os.geteuid())
AS_ME = JobAccount(
    name=_ME.pw_name,
    uid=_ME.pw_uid,
    gid=_ME.pw_gid,
    groups=(),
    home=_ME.pw_dir,
    shell=_ME.pw_shell,
    switch=False,
)
"""The test's own account, with no account switch: what an agent not run as root uses."""


def assignment(job_id: int = 1, command: list[str] | None = None, **overrides: Any) -> Assignment:
    """A bound assignment with sensible defaults; any field can be overridden."""
    fields: dict[str, Any] = {
        "job_id": job_id,
        "attempt": 1,
        "name": f"job-{job_id}",
        "project": "vision",
        "user": "alice",
        "unix_user": "alice",
        "kind": "train",
        "state": "bound",
        "command": command or ["true"],
        "env": {},
        "workdir": None,
        "gpu_ids": [],
        "gpu_uuids": [],
        "cpus": None,
        "memory_bytes": None,
        "grace_seconds": 5.0,
        "stop": False,
    }
    fields.update(overrides)
    return Assignment.model_validate(fields)


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def pid_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def kill_jobs(state_dir: Path) -> None:
    """SIGKILL every job process group recorded under ``state_dir``, and remove the
    jobs' cgroups (test cleanup)."""
    for meta in state_dir.glob("jobs/*/meta.json"):
        with contextlib.suppress(OSError, ValueError):
            pgid = int(json.loads(meta.read_text())["pgid"])
            if pgid > 1:
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(OSError, ValueError):
            dirs = json.loads(meta.read_text()).get("cgroups") or []
            cgroup = JobCgroup.adopt(dirs, meta.parent.name)
            if cgroup is not None:
                cgroup.remove()


@pytest.fixture(name="other_user")
def other_user_fixture() -> Iterator[str]:
    """Fixture ``other_user``: a throw-away Unix account (needs root and useradd); its
    processes are killed and the account removed afterwards. A test module that imports
    ``other_user_fixture`` can ask for ``other_user``."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("userdel"):
        pytest.skip("needs root and useradd to make a throw-away account")
    name = f"corral-t{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [
            *("useradd", "--no-create-home", "--home-dir", f"/nonexistent/{name}"),
            *("--shell", "/bin/sh", name),
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", name], check=True, capture_output=True)
