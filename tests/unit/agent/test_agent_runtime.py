"""The process runtime, with real processes."""

from __future__ import annotations

import json
import os
import pwd
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_testkit import AS_ME, assignment, kill_jobs, other_user_fixture, pid_gone, wait_for  # noqa: F401 (a fixture)

from corral.agent import jobdirs
from corral.agent.jobdirs import JobKey
from corral.agent.runtime.base import JobExit, JobHandle, StartError
from corral.agent.runtime.env import job_environment
from corral.agent.runtime.process import ProcessRuntime
from corral.agent.usermap import JobAccount, UserMapper
from corral.core.schemas import Assignment


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "agent"
    kill_jobs(tmp_path / "agent")


def runtime(state_dir: Path, *, simulated: bool = False) -> ProcessRuntime:
    return ProcessRuntime(
        state_dir,
        node_name="gpu-1",
        gpus_simulated=simulated,
        agent_env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "SECRET": "agent-only"},
    )


def finish(rt: ProcessRuntime, handle: JobHandle, timeout: float = 10) -> JobExit:
    return wait_for(lambda: rt.poll(handle), f"job {handle.key} to end", timeout)


def run(rt: ProcessRuntime, a: Assignment, account: JobAccount = AS_ME) -> tuple[JobExit, str]:
    handle = rt.start(a, account)
    result = finish(rt, handle)
    return result, (handle.job_dir / jobdirs.OUTPUT).read_text()


def test_environment_and_visible_gpus(state_dir: Path) -> None:
    a = assignment(
        7,
        ["env"],
        attempt=2,
        name="train-x",
        project="vision",
        user="alice",
        env={"LR": "0.1", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "CORRAL_NODE": "forged"},
        gpu_ids=[1, 3],
        gpu_uuids=["GPU-aaa", "GPU-bbb"],
    )
    result, output = run(runtime(state_dir, simulated=True), a)
    env = dict(line.split("=", 1) for line in output.splitlines())
    assert result == JobExit(0)
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaa,GPU-bbb"
    assert env["CORRAL_GPU_UUIDS"] == "GPU-aaa,GPU-bbb"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["CORRAL_GPUS_SIMULATED"] == "1"
    assert env["CORRAL_NODE"] == "gpu-1"
    assert (env["CORRAL_JOB_ID"], env["CORRAL_JOB_ATTEMPT"], env["CORRAL_JOB_GPUS"]) == (
        "7",
        "2",
        "2",
    )
    assert (env["CORRAL_JOB_NAME"], env["CORRAL_JOB_PROJECT"], env["CORRAL_JOB_USER"]) == (
        "train-x",
        "vision",
        "alice",
    )
    assert env["LR"] == "0.1"
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (AS_ME.home, AS_ME.name, AS_ME.name)
    assert env["LANG"] == "C.UTF-8"
    assert "SECRET" not in env  # nothing else leaks from the agent


def test_no_gpus_hides_every_gpu(state_dir: Path) -> None:
    _, output = run(runtime(state_dir), assignment(1, ["env"]))
    env = dict(line.split("=", 1) for line in output.splitlines())
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert env["CORRAL_JOB_GPUS"] == "0"
    assert "CORRAL_GPUS_SIMULATED" not in env


def environment(a: Assignment) -> dict[str, str]:
    return job_environment(a, AS_ME, node_name="gpu-1", gpus_simulated=False, agent_env={})


def test_a_job_that_is_not_a_gang_is_worker_0_of_1(state_dir: Path) -> None:
    _, output = run(runtime(state_dir), assignment(1, ["env"], env={"MASTER_ADDR": "mine"}))
    env = dict(line.split("=", 1) for line in output.splitlines())
    assert (env["CORRAL_WORKER_RANK"], env["CORRAL_WORLD_SIZE"]) == ("0", "1")
    assert env["MASTER_ADDR"] == "mine"  # no rendezvous of Corral's: the job's own stays
    assert "MASTER_PORT" not in env
    assert "CORRAL_GPU_FRACTION" not in env and "CORRAL_GPU_MEMORY_BYTES" not in env


def test_gang_worker_environment(state_dir: Path) -> None:
    a = assignment(
        7,
        ["env"],
        rank=2,
        world_size=4,
        master_addr="gpu-7.example.org",
        master_port=29513,
        env={"MASTER_ADDR": "forged", "MASTER_PORT": "1", "LR": "0.1"},
        gpu_ids=[4, 5],
        gpu_uuids=["GPU-e", "GPU-f"],
    )
    result, output = run(runtime(state_dir), a)
    env = dict(line.split("=", 1) for line in output.splitlines())
    assert result == JobExit(0)
    assert (env["CORRAL_WORKER_RANK"], env["CORRAL_WORLD_SIZE"]) == ("2", "4")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("gpu-7.example.org", "29513")
    assert env["LR"] == "0.1"
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5"


def test_a_mig_job_sees_its_instance_by_uuid() -> None:
    mig = "MIG-4f7c2a9e-1d2b-5c3e-8f4a-0b1c2d3e4f5a"
    env = environment(assignment(1, gpu_ids=[3], gpu_uuids=[mig], gpu_memory_bytes=10 << 30))
    assert env["CUDA_VISIBLE_DEVICES"] == mig  # not "3": that would be the whole GPU
    assert env["NVIDIA_VISIBLE_DEVICES"] == mig
    assert env["CORRAL_GPU_UUIDS"] == mig
    assert env["CORRAL_JOB_GPUS"] == "1"
    assert env["CORRAL_GPU_MEMORY_BYTES"] == str(10 << 30)
    assert "CORRAL_GPU_FRACTION" not in env


def test_a_fractional_job_is_told_its_share() -> None:
    env = environment(
        assignment(
            1,
            gpu_ids=[2],
            gpu_uuids=["GPU-ccc"],
            gpu_fraction=0.25,
            gpu_memory_bytes=20 * 1024**3,
        )
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "2"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "GPU-ccc"
    assert env["CORRAL_GPU_FRACTION"] == "0.25"
    assert env["CORRAL_GPU_MEMORY_BYTES"] == "21474836480"
    half = environment(assignment(1, gpu_ids=[0], gpu_uuids=["GPU-a"], gpu_fraction=0.5))
    assert half["CORRAL_GPU_FRACTION"] == "0.5"
    assert "CORRAL_GPU_MEMORY_BYTES" not in half


def test_working_directory(state_dir: Path, tmp_path: Path) -> None:
    rt = runtime(state_dir)
    _, output = run(rt, assignment(1, ["pwd"], workdir=str(tmp_path)))
    assert output == f"{tmp_path}\n"
    _, output = run(rt, assignment(2, ["pwd"]))
    assert output == f"{jobdirs.job_dir(state_dir, JobKey(2, 1))}\n"


def test_missing_working_directory_fails_the_start(state_dir: Path) -> None:
    with pytest.raises(StartError) as err:
        runtime(state_dir).start(assignment(1, workdir="/no/such/dir"), AS_ME)
    assert str(err.value) == "working directory /no/such/dir does not exist on node gpu-1"
    assert not jobdirs.job_dir(state_dir, JobKey(1, 1)).exists()


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["true"], 0),
        (["sh", "-c", "exit 3"], 3),
        (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
        (["sh", "-c", "kill -KILL $$"], 128 + signal.SIGKILL),
        (["no-such-program-xyz"], 127),
    ],
)
def test_exit_codes(state_dir: Path, command: list[str], code: int) -> None:
    rt = runtime(state_dir)
    handle = rt.start(assignment(1, command), AS_ME)
    assert finish(rt, handle).exit_code == code
    assert jobdirs.read_exit_code(handle.job_dir) == code  # recorded for a restarted agent


def test_output_is_captured_in_order_with_stderr(state_dir: Path) -> None:
    script = "echo one; echo two >&2; printf 'three'; echo ' four' >&2"
    _, output = run(runtime(state_dir), assignment(1, ["sh", "-c", script]))
    assert output == "one\ntwo\nthree four\n"


def test_meta_records_the_process(state_dir: Path) -> None:
    rt = runtime(state_dir)
    handle = rt.start(assignment(4, ["sleep", "30"], attempt=2, name="m"), AS_ME)
    meta = json.loads((handle.job_dir / jobdirs.META).read_text())
    assert (meta["job_id"], meta["attempt"], meta["name"]) == (4, 2, "m")
    assert meta["pid"] == meta["pgid"] == handle.pid
    assert os.getpgid(handle.pid) == handle.pid and os.getsid(handle.pid) == handle.pid
    assert meta["create_time"] > 0 and meta["started_at"]
    rt.stop(handle, 0)
    finish(rt, handle)


def test_stop_a_job_that_exits_on_sigterm(state_dir: Path) -> None:
    rt = runtime(state_dir)
    script = "trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
    handle = rt.start(assignment(1, ["sh", "-c", script]), AS_ME)
    wait_for(lambda: b"ready" in (handle.job_dir / jobdirs.OUTPUT).read_bytes(), "job ready")
    began = time.monotonic()
    rt.stop(handle, 20)
    result = finish(rt, handle)
    assert time.monotonic() - began < 5, "a job that exits on SIGTERM is not held for grace"
    assert result.exit_code == 0
    output = (handle.job_dir / jobdirs.OUTPUT).read_text()
    assert output.startswith("ready\n") and output.endswith("got TERM\n")


def test_a_stop_right_after_the_start_is_not_lost(state_dir: Path) -> None:
    """A SIGTERM landing while the shim forks the command must still end the job (it
    used to be swallowed now and then on a loaded machine, leaving only SIGKILL)."""
    rt = runtime(state_dir)
    handles = []
    for job_id in range(1, 41):
        handles.append(rt.start(assignment(job_id, ["sleep", "300"]), AS_ME))
        rt.stop(handles[-1], 60)
    for handle in handles:
        result = finish(rt, handle, timeout=15)
        assert result.exit_code == 128 + signal.SIGTERM, result


def test_sigterm_waits_for_the_command_to_be_under_way(state_dir: Path) -> None:
    """The mechanism behind the test above, made deterministic: until the shim's
    "started" marker exists, a stop holds its SIGTERM back (the grace clock runs)."""
    rt = runtime(state_dir)
    handle = rt.start(assignment(1, ["sleep", "300"]), AS_ME)
    marker = handle.job_dir / jobdirs.STARTED
    wait_for(marker.exists, "the started marker")
    marker.unlink()  # as if the shim had not got that far yet
    rt.stop(handle, 60)
    # Nothing to wait for here: the point is that nothing happens for a while.
    until = time.monotonic() + 0.3
    while time.monotonic() < until:
        assert rt.poll(handle) is None, "SIGTERM must not be sent before the marker exists"
    marker.touch()
    assert finish(rt, handle).exit_code == 128 + signal.SIGTERM


def test_stop_kills_the_whole_group_after_grace(state_dir: Path) -> None:
    rt = runtime(state_dir)
    # Ignores SIGTERM, and so do the two grandchildren it leaves in the background.
    script = "trap '' TERM; sleep 300 & echo $!; sleep 300 & echo $!; echo ready; wait"
    handle = rt.start(assignment(1, ["sh", "-c", script]), AS_ME)
    log = handle.job_dir / jobdirs.OUTPUT
    wait_for(lambda: "ready" in log.read_text(), "job ready")
    grandchildren = [int(x) for x in log.read_text().split()[:2]]
    began = time.monotonic()
    rt.stop(handle, 0.5)
    result = finish(rt, handle)
    assert time.monotonic() - began >= 0.5
    assert result.exit_code == 128 + signal.SIGKILL
    assert result.message and "SIGKILL after the 0.5 s grace period" in result.message
    wait_for(lambda: all(pid_gone(p) for p in grandchildren), "grandchildren to die", 5)


def test_leftover_background_processes_die_with_the_job(state_dir: Path) -> None:
    rt = runtime(state_dir)
    handle = rt.start(assignment(1, ["sh", "-c", "sleep 300 & echo $!"]), AS_ME)
    assert finish(rt, handle).exit_code == 0
    orphan = int((handle.job_dir / jobdirs.OUTPUT).read_text())
    wait_for(lambda: pid_gone(orphan), "the orphan to be killed", 5)


def test_adopt_a_running_job_after_restart(state_dir: Path) -> None:
    first = runtime(state_dir)
    release = state_dir / "release"
    script = f"echo started; while [ ! -e {release} ]; do sleep 0.02; done; exit 5"
    handle = first.start(assignment(3, ["sh", "-c", script]), AS_ME)

    second = runtime(state_dir)  # the agent restarted: a new runtime, same state dir
    adopted = second.adopt(handle.job_dir)
    assert adopted is not None and adopted.adopted
    assert (adopted.key, adopted.pid, adopted.name) == (handle.key, handle.pid, "job-3")
    assert second.running() == [adopted]
    assert second.poll(adopted) is None
    release.touch()
    assert finish(second, adopted) == JobExit(5)
    assert second.running() == []


def test_adopt_a_job_that_ended_while_the_agent_was_down(state_dir: Path) -> None:
    first = runtime(state_dir)
    handle = first.start(assignment(3, ["sh", "-c", "exit 9"]), AS_ME)
    wait_for(lambda: jobdirs.read_exit_code(handle.job_dir) is not None, "the exit code file")
    second = runtime(state_dir)
    adopted = second.adopt(handle.job_dir)
    assert adopted is not None
    assert second.poll(adopted) == JobExit(9)


def test_adopt_without_exit_code_reports_it_unknown(state_dir: Path) -> None:
    first = runtime(state_dir)
    handle = first.start(assignment(3, ["sleep", "300"]), AS_ME)
    assert handle.pid is not None
    os.killpg(handle.pid, signal.SIGKILL)  # the shell dies too: no exit-code file
    wait_for(lambda: first.poll(handle), "the job to die")
    adopted = runtime(state_dir).adopt(handle.job_dir)
    assert adopted is not None
    assert runtime(state_dir).adopt(handle.job_dir) is not None
    second = runtime(state_dir)
    adopted = second.adopt(handle.job_dir)
    assert adopted is not None
    assert second.poll(adopted) == JobExit(
        None, "ended while the agent was down; exit code unknown"
    )


def test_adopt_does_not_mistake_a_reused_pid(state_dir: Path) -> None:
    first = runtime(state_dir)
    handle = first.start(assignment(3, ["sleep", "300"]), AS_ME)
    meta_path = handle.job_dir / jobdirs.META
    meta = json.loads(meta_path.read_text())
    meta["create_time"] -= 3600  # as if this pid had belonged to an older process
    meta_path.write_text(json.dumps(meta))
    second = runtime(state_dir)
    adopted = second.adopt(handle.job_dir)
    assert adopted is not None
    assert second.poll(adopted) == JobExit(
        None, "ended while the agent was down; exit code unknown"
    )
    assert not pid_gone(handle.pid or 0), "the unrelated process was left alone"
    first.stop(handle, 0)
    finish(first, handle)


def test_adopt_ignores_a_meta_file_the_agent_did_not_write(state_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another account")
    handle = runtime(state_dir).start(assignment(3, ["true"]), AS_ME)
    os.chown(handle.job_dir / jobdirs.META, 65534, 65534)
    assert runtime(state_dir).adopt(handle.job_dir) is None
    meta = handle.job_dir / jobdirs.META
    meta.unlink()
    meta.symlink_to(state_dir / "elsewhere.json")
    assert runtime(state_dir).adopt(handle.job_dir) is None


def test_job_directory_names() -> None:
    assert jobdirs.dir_name(JobKey(12, 3)) == "12-3"  # as before gangs existed
    assert jobdirs.dir_name(JobKey(12, 3, 1)) == "12-3-r1"
    assert jobdirs.parse_key("12-3") == JobKey(12, 3, 0)
    assert jobdirs.parse_key("12-3-r1") == JobKey(12, 3, 1)
    assert jobdirs.parse_key("12-3-r15") == (12, 3, 15)
    for odd in ("12-3-r0", "12-3-r01", "12-3-r", "12-3-1", "12-3-x1", "012-3", "12", "a-b",
                "12-\u00b2", "12-3-r1.tmp", ""):  # fmt: skip
        assert jobdirs.parse_key(odd) is None, odd


def test_workers_of_one_job_get_their_own_directories(state_dir: Path) -> None:
    rt = runtime(state_dir)
    script = "echo worker $CORRAL_WORKER_RANK"
    handles = [
        rt.start(assignment(5, ["sh", "-c", script], rank=r, world_size=2), AS_ME) for r in (0, 1)
    ]
    assert [h.key for h in handles] == [(5, 1, 0), (5, 1, 1)]
    assert [h.job_dir.name for h in handles] == ["5-1", "5-1-r1"]
    assert sorted(rt.running(), key=lambda h: h.rank) == handles
    for h in handles:
        assert finish(rt, h) == JobExit(0)
        assert (h.job_dir / jobdirs.OUTPUT).read_text() == f"worker {h.rank}\n"
    assert [(k, p.name) for k, p in jobdirs.list_job_dirs(state_dir)] == [
        ((5, 1, 0), "5-1"),
        ((5, 1, 1), "5-1-r1"),
    ]


def test_adopt_a_gang_worker_after_restart(state_dir: Path) -> None:
    first = runtime(state_dir)
    release = state_dir / "release"
    script = f"while [ ! -e {release} ]; do sleep 0.02; done; exit 6"
    handle = first.start(assignment(3, ["sh", "-c", script], rank=2, world_size=3), AS_ME)
    second = runtime(state_dir)
    adopted = second.adopt(handle.job_dir)
    assert adopted is not None and adopted.adopted
    assert (adopted.key, adopted.world_size, adopted.pid) == ((3, 1, 2), 3, handle.pid)
    assert second.poll(adopted) is None
    release.touch()
    assert finish(second, adopted) == JobExit(6)


def test_adopt_a_job_started_before_gangs_existed(state_dir: Path) -> None:
    """A meta.json written by an older agent has no rank: the job is rank 0 of 1."""
    first = runtime(state_dir)
    handle = first.start(assignment(3, ["sleep", "300"]), AS_ME)
    meta_path = handle.job_dir / jobdirs.META
    meta = json.loads(meta_path.read_text())
    del meta["rank"], meta["world_size"]
    meta_path.write_text(json.dumps(meta))
    adopted = runtime(state_dir).adopt(handle.job_dir)
    assert adopted is not None
    assert (adopted.key, adopted.world_size, adopted.pid) == ((3, 1, 0), 1, handle.pid)
    first.stop(handle, 0)
    finish(first, handle)


# ------------------------------------------------------------------ other accounts


def test_job_runs_as_the_mapped_account(state_dir: Path, other_user: str) -> None:
    entry = pwd.getpwnam(other_user)
    account = UserMapper({"alice": other_user}, allow_root_jobs=False, node_name="gpu-1").resolve(
        assignment(1, user="alice")
    )
    rt = runtime(state_dir)
    # The state dir is below pytest's private (0700) temp dir, which the account cannot
    # enter: the job must still start, and its shim must still record the exit code.
    handle = rt.start(
        assignment(1, ["sh", "-c", "id -u; id -g; echo $HOME $USER; exit 4"]), account
    )
    assert finish(rt, handle) == JobExit(4)
    assert jobdirs.read_exit_code(handle.job_dir) == 4
    uid, gid, home_user = (handle.job_dir / jobdirs.OUTPUT).read_text().splitlines()
    assert (int(uid), int(gid)) == (entry.pw_uid, entry.pw_gid)
    assert home_user == f"/nonexistent/{other_user} {other_user}"
    assert handle.job_dir.stat().st_uid == entry.pw_uid
    # The agent's own record stays the agent's.
    assert (handle.job_dir / jobdirs.META).stat().st_uid == 0


def test_job_as_another_account_cannot_use_a_workdir_it_cannot_enter(
    state_dir: Path, tmp_path: Path, other_user: str
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    account = UserMapper({"*": other_user}, allow_root_jobs=False, node_name="gpu-1").resolve(
        assignment(1)
    )
    rt = runtime(state_dir)
    handle = rt.start(assignment(1, ["pwd"], workdir=str(private)), account)
    assert finish(rt, handle).exit_code == 2
    assert "can't cd" in (handle.job_dir / jobdirs.OUTPUT).read_text()
