"""The process runtime's CPU and memory limits, with real cgroups (root only; elsewhere
these tests skip loudly, see ``tests/support/cgroup_limits.py``)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_testkit import AS_ME, assignment, kill_jobs, other_user_fixture, pid_gone, wait_for  # noqa: F401 (a fixture)

from corral.agent import jobdirs
from corral.agent.jobdirs import JobKey
from corral.agent.runtime import cgroups
from corral.agent.runtime.base import JobExit, JobHandle, StartError
from corral.agent.runtime.cgroups import Cgroups, Hierarchy, JobCgroup
from corral.agent.runtime.process import SHIM, SHIM_NAME, ProcessRuntime
from corral.agent.usermap import UserMapper
from support import cgroup_limits

MiB = 1 << 20
# Writes 256 MiB (zeroed allocations would not: untouched pages cost nothing).
HOG = [sys.executable, "-c", "b = bytes(range(256)) * (1 << 20)"]
OOM = "killed by the kernel for running out of memory (its memory limit is 64MiB)"


@pytest.fixture
def limits() -> Iterator[Cgroups]:
    found = cgroup_limits.usable(("memory",))
    yield found
    cgroup_limits.remove_tree(found)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "agent"
    kill_jobs(tmp_path / "agent")


def runtime(state_dir: Path, limits: Cgroups) -> ProcessRuntime:
    return ProcessRuntime(
        state_dir,
        node_name="gpu-1",
        gpus_simulated=False,
        agent_env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"},
        cgroups=limits,
    )


def finish(rt: ProcessRuntime, handle: JobHandle, timeout: float = 10) -> JobExit:
    return wait_for(lambda: rt.poll(handle), f"job {handle.key} to end", timeout)


def cgroup_of(handle: JobHandle) -> JobCgroup:
    meta = jobdirs.read_meta(handle.job_dir)
    assert meta is not None
    cgroup = JobCgroup.adopt(meta.cgroups, handle.job_dir.name)
    assert cgroup is not None, f"no cgroup recorded in {meta}"
    return cgroup


def gone(cgroup: JobCgroup) -> bool:
    return not any(d.exists() for d in cgroup.dirs)


def test_a_job_over_its_memory_limit_is_killed_and_reported_as_oom(
    state_dir: Path, limits: Cgroups
) -> None:
    rt = runtime(state_dir, limits)
    began = time.monotonic()
    handle = rt.start(assignment(1, HOG, memory_bytes=64 * MiB), AS_ME)
    assert handle.note == f"limits: memory 64MiB (cgroup v{limits.version})"
    cgroup = cgroup_of(handle)
    result = finish(rt, handle)
    took = time.monotonic() - began
    print(f"OOM kill reported {took:.2f} s after the start")
    assert result == JobExit(137, OOM)
    assert took < 5
    assert gone(cgroup), "the job's cgroup is removed once it has ended"


def test_a_job_within_its_limits_runs_normally(state_dir: Path, limits: Cgroups) -> None:
    rt = runtime(state_dir, limits)
    script = "b = bytes(range(256)) * (1 << 16); print(len(b))"  # 16 MiB, under 64
    handle = rt.start(
        assignment(1, [sys.executable, "-c", script], memory_bytes=64 * MiB, cpus=1), AS_ME
    )
    cgroup = cgroup_of(handle)
    assert cgroup.memory_limit() == 64 * MiB
    assert finish(rt, handle) == JobExit(0)
    assert (handle.job_dir / jobdirs.OUTPUT).read_text() == f"{16 * MiB}\n"
    assert gone(cgroup)


def test_the_command_is_in_its_cgroup_from_its_first_instruction(
    state_dir: Path, limits: Cgroups
) -> None:
    rt = runtime(state_dir, limits)
    handle = rt.start(assignment(1, ["cat", "/proc/self/cgroup"], memory_bytes=MiB << 10), AS_ME)
    assert finish(rt, handle) == JobExit(0)
    suffix = f"/{limits.parent}/{cgroups.agent_group('gpu-1', state_dir)}/1-1"
    lines = (handle.job_dir / jobdirs.OUTPUT).read_text().splitlines()
    assert sum(line.endswith(suffix) for line in lines) == len(limits.hierarchies), lines


def test_a_busy_job_gets_its_cpu_share(state_dir: Path) -> None:
    limits = cgroup_limits.usable(("cpu",))
    try:
        rt = runtime(state_dir, limits)
        handle = rt.start(assignment(1, ["sh", "-c", "while :; do :; done"], cpus=0.5), AS_ME)
        assert handle.note == f"limits: 0.5 CPUs (cgroup v{limits.version})"
        cgroup = cgroup_of(handle)
        wait_for((handle.job_dir / jobdirs.STARTED).exists, "the job to start")
        used, began = cgroup.cpu_seconds(), time.monotonic()
        if used is None:
            pytest.skip(f"{cgroup_limits.UNAVAILABLE_PREFIX} (no CPU accounting)")
        time.sleep(1.5)  # a measuring window, not a wait for something
        share = ((cgroup.cpu_seconds() or 0) - used) / (time.monotonic() - began)
        print(f"CPU share of a busy loop limited to 0.5 CPUs: {share:.3f} cores")
        assert 0.3 <= share <= 0.7
        rt.stop(handle, 0)
        finish(rt, handle)
        assert gone(cgroup)
    finally:
        kill_jobs(state_dir)
        cgroup_limits.remove_tree(limits)


def test_the_cgroup_goes_with_whatever_escaped_the_process_group(
    state_dir: Path, limits: Cgroups
) -> None:
    rt = runtime(state_dir, limits)
    # setsid: a new session, out of reach of the job's process group.
    handle = rt.start(assignment(1, ["sh", "-c", "setsid sleep 300 & echo $!"]), AS_ME)
    cgroup = cgroup_of(handle)
    assert finish(rt, handle) == JobExit(0)
    escaped = int((handle.job_dir / jobdirs.OUTPUT).read_text())
    wait_for(lambda: pid_gone(escaped), "the escaped process to be killed", 5)
    assert gone(cgroup)
    agent_dir = cgroup.dirs[0].parent
    assert not agent_dir.exists(), "the agent's directory goes with its last job"


def test_a_readopted_job_is_reported_oom(state_dir: Path, limits: Cgroups) -> None:
    first = runtime(state_dir, limits)
    release = state_dir / "release"
    script = f"while [ ! -e {release} ]; do sleep 0.02; done; exec {shlex.join(HOG)}"
    handle = first.start(assignment(3, ["sh", "-c", script], memory_bytes=64 * MiB), AS_ME)
    cgroup = cgroup_of(handle)

    second = runtime(state_dir, limits)  # the agent restarted
    adopted = second.adopt(handle.job_dir)
    assert adopted is not None and adopted.adopted
    assert second.poll(adopted) is None
    release.touch()
    assert finish(second, adopted) == JobExit(137, OOM)
    assert gone(cgroup)


def test_a_job_its_stop_killed_is_not_called_oom(state_dir: Path, limits: Cgroups) -> None:
    rt = runtime(state_dir, limits)
    handle = rt.start(assignment(1, ["sleep", "300"], memory_bytes=64 * MiB), AS_ME)
    rt.stop(handle, 0)
    result = finish(rt, handle)
    assert result.exit_code == 137 and "memory" not in (result.message or "")


def test_an_oom_kill_of_one_process_of_a_job_that_lives_on(
    state_dir: Path, limits: Cgroups
) -> None:
    rt = runtime(state_dir, limits)
    script = f"{shlex.join(HOG)}; echo hog ended with $?; exit 3"
    handle = rt.start(assignment(1, ["sh", "-c", script], memory_bytes=64 * MiB), AS_ME)
    assert finish(rt, handle) == JobExit(
        3,
        "a process of it " + OOM,
    )
    assert (handle.job_dir / jobdirs.OUTPUT).read_text().endswith("hog ended with 137\n")


def test_without_cgroups_the_limits_are_noted_as_not_enforced(state_dir: Path) -> None:
    rt = runtime(state_dir, cgroups.disabled("not root"))
    handle = rt.start(assignment(1, ["true"], cpus=0.5, memory_bytes=1 << 30), AS_ME)
    assert handle.note == "limits not enforced: 0.5 CPUs, memory 1GiB (not root)"
    assert finish(rt, handle) == JobExit(0)
    meta = jobdirs.read_meta(handle.job_dir)
    assert meta is not None and meta.cgroups == []


def test_a_cgroup_that_cannot_be_made_fails_the_start(state_dir: Path, tmp_path: Path) -> None:
    broken = Cgroups(
        version=1, hierarchies=(Hierarchy(tmp_path / "not-mounted", frozenset({"memory"})),)
    )
    with pytest.raises(StartError, match=r"^could not set up the job's cgroup: cannot create "):
        runtime(state_dir, broken).start(assignment(1, memory_bytes=64 * MiB), AS_ME)
    assert not jobdirs.job_dir(state_dir, JobKey(1, 1)).exists()


def test_a_shim_never_told_to_go_runs_nothing(tmp_path: Path) -> None:
    """The agent died between starting the shim and recording the job: nothing runs."""
    ran = tmp_path / "ran"
    shim = subprocess.Popen(
        ["/bin/sh", "-c", SHIM, SHIM_NAME, "", "touch", str(ran)],
        stdin=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert shim.stdin is not None
    shim.stdin.close()
    assert shim.wait(10) == 125
    assert not ran.exists() and not (tmp_path / jobdirs.EXIT_CODE).exists()


def test_a_job_as_another_account_is_limited_too(
    state_dir: Path, limits: Cgroups, other_user: str
) -> None:
    """The account switch happens before the shim runs; its cgroup is still joined."""
    account = UserMapper({"*": other_user}, allow_root_jobs=False, node_name="gpu-1").resolve(
        assignment(1)
    )
    rt = runtime(state_dir, limits)
    handle = rt.start(
        assignment(1, ["sh", "-c", "id -un; cat /proc/self/cgroup"], memory_bytes=64 * MiB),
        account,
    )
    assert finish(rt, handle) == JobExit(0)
    user, *lines = (handle.job_dir / jobdirs.OUTPUT).read_text().splitlines()
    assert user == other_user
    suffix = f"/{limits.parent}/{cgroups.agent_group('gpu-1', state_dir)}/1-1"
    assert sum(line.endswith(suffix) for line in lines) == len(limits.hierarchies), lines


def test_a_job_recorded_before_cgroups_existed_is_adopted(state_dir: Path) -> None:
    """A meta.json from an older agent has no "cgroups": the job runs on, unlimited."""
    first = runtime(state_dir, cgroups.disabled("not root"))
    handle = first.start(assignment(3, ["sh", "-c", "exit 4"]), AS_ME)
    wait_for(lambda: jobdirs.read_exit_code(handle.job_dir) is not None, "the exit code file")
    meta_path = handle.job_dir / jobdirs.META
    meta = json.loads(meta_path.read_text())
    del meta["cgroups"]
    meta_path.write_text(json.dumps(meta))
    second = runtime(state_dir, cgroups.disabled("not root"))
    adopted = second.adopt(handle.job_dir)
    assert adopted is not None
    assert finish(second, adopted) == JobExit(4)
