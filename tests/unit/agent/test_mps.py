"""CUDA MPS (`corral.agent.mps`): the variables jobs get, and the per-GPU daemons the
agent starts and stops (with a fake ``nvidia-cuda-mps-control`` on PATH)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_testkit import AS_ME, assignment, pid_gone, wait_for

from corral.agent.mps import (
    PID_FILE,
    MpsDaemons,
    MpsError,
    MpsSettings,
    NodeMps,
    active_thread_percentage,
    external_settings,
    mps_environment,
    pinned_memory_limit,
)
from corral.agent.runtime.env import job_environment
from corral.core.schemas import Assignment, GpuInfo

GiB = 1024**3
MPS = MpsSettings({0: "/run/mps/gpu0/pipe", 1: "/run/mps/gpu1/pipe"})
MPS_VARIABLES = {
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
}


def shared(**fields: object) -> Assignment:
    base: dict[str, object] = {
        "gpu_ids": [1],
        "gpu_uuids": ["GPU-aaaa-1"],
        "gpu_fraction": 0.5,
        "gpu_memory_bytes": 40 * GiB,
    }
    base.update(fields)
    return assignment(3, **base)


def env_of(a: Assignment, mps: MpsSettings | None) -> dict[str, str]:
    return job_environment(a, AS_ME, node_name="gpu-1", gpus_simulated=False, agent_env={}, mps=mps)


# ------------------------------------------------------------------ the job's variables


def test_a_fractional_job_gets_the_mps_limits_when_mps_is_set_up() -> None:
    env = env_of(shared(env={"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=80G"}), MPS)
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/run/mps/gpu1/pipe"  # its GPU's daemon
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=40960M"  # the job's own loses
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    # An MPS server renumbers the devices it was started with: the UUID is unambiguous.
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa-1"
    assert env["CORRAL_GPU_FRACTION"] == "0.5"


def test_a_memory_job_gets_the_memory_limit_but_not_an_sm_share() -> None:
    env = env_of(shared(gpu_fraction=None, gpu_memory_bytes=20 * GiB + 5), MPS)
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=20480M"
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in env


@pytest.mark.parametrize(
    ("job", "mps"),
    [
        (shared(), None),  # MPS off
        (shared(gpu_ids=[2], gpu_uuids=["GPU-c"]), MPS),  # no daemon for its GPU
        (assignment(4, gpu_ids=[0], gpu_uuids=["GPU-a"]), MPS),  # a whole GPU
        (shared(gpu_fraction=None, gpu_memory_bytes=None, gpu_uuids=["MIG-x"]), MPS),
    ],
    ids=["mps-off", "no-daemon-for-its-gpu", "whole-gpu", "mig"],
)
def test_other_jobs_get_no_mps_variables(job: Assignment, mps: MpsSettings | None) -> None:
    env = env_of(job, mps)
    assert not MPS_VARIABLES & env.keys()
    if not job.gpu_uuids[0].startswith("MIG-"):
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, job.gpu_ids))


def test_limit_formats() -> None:
    assert pinned_memory_limit(512 * 1024**2) == "0=512M"
    assert pinned_memory_limit(1000) == "0=1M"  # never 0, which would mean no memory at all
    assert [active_thread_percentage(f) for f in (0.5, 0.25, 0.333, 0.001, 1.0)] == [
        "50",
        "25",
        "33",
        "1",
        "100",
    ]
    assert mps_environment(shared(), None) == {}


def test_external_mode_points_every_gpu_at_the_nodes_daemon(tmp_path: Path) -> None:
    gpus = [gpu(0), gpu(1)]
    settings, line = external_settings(tmp_path, gpus)
    assert settings.pipe_directories == {0: str(tmp_path), 1: str(tmp_path)}
    assert "WARNING: no control daemon" in line
    (tmp_path / "control").touch()
    assert "use the control daemon at" in external_settings(tmp_path, gpus)[1]


# ------------------------------------------------------------------ daemons (start mode)

# Behaves like nvidia-cuda-mps-control where it matters here: `-d` daemonizes a process
# that writes its pid file in CUDA_MPS_PIPE_DIRECTORY; without arguments it reads
# commands on stdin, and `quit` ends the daemon of that pipe directory.
FAKE_CONTROL = r"""#!/bin/sh
pipe="$CUDA_MPS_PIPE_DIRECTORY"
case "$1" in
-d)
    [ -n "$FAIL_START" ] && { echo "cannot open the device" >&2; exit 3; }
    echo "$CUDA_VISIBLE_DEVICES $CUDA_MPS_LOG_DIRECTORY" > "$pipe/started-with"
    nohup "$0" --serve </dev/null >/dev/null 2>&1 &
    exit 0 ;;
--serve)
    echo $$ > "$pipe/nvidia-cuda-mps-control.pid"
    trap 'rm -f "$pipe/nvidia-cuda-mps-control.pid"; exit 0' TERM
    while [ ! -e "$pipe/quit" ]; do sleep 0.05; done
    rm -f "$pipe/quit" "$pipe/nvidia-cuda-mps-control.pid"
    exit 0 ;;
esac
read -r command
[ "$command" = quit ] && touch "$pipe/quit"
exit 0
"""


def gpu(index: int, mig: bool = False) -> GpuInfo:
    instances = (
        [
            {
                "uuid": f"MIG-{index}",
                "profile": "1g.10gb",
                "gpu_instance_id": 1,
                "compute_instance_id": 0,
                "compute_slices": 1,
                "memory_bytes": 10 * GiB,
            }
        ]
        if mig
        else []
    )
    return GpuInfo.model_validate(
        {
            "index": index,
            "uuid": f"GPU-{index}",
            "model": "NVIDIA A100",
            "memory_bytes": 80 * GiB,
            "mig": instances,
        }
    )


@pytest.fixture
def fake_path(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment whose PATH has the fake control program first; every daemon it
    started is killed (by PID) afterwards."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "nvidia-cuda-mps-control"
    program.write_text(FAKE_CONTROL)
    program.chmod(0o755)
    yield {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for pid_file in tmp_path.glob("**/" + PID_FILE):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)


def daemons(root: Path, environ: dict[str, str], *gpus: GpuInfo) -> MpsDaemons:
    said: list[str] = []
    return MpsDaemons(root, list(gpus), say=said.append, environ=environ, timeout=5)


def pid_of(pipe: Path) -> int:
    return int((pipe / PID_FILE).read_text())


def test_start_runs_one_daemon_per_gpu_and_stop_ends_them(
    tmp_path: Path, fake_path: dict[str, str]
) -> None:
    root = tmp_path / "mps"
    d = daemons(root, fake_path, gpu(0), gpu(1), gpu(2, mig=True))
    settings = d.start()
    pipes = {i: root / f"gpu{i}" / "pipe" for i in (0, 1)}
    assert settings.pipe_directories == {i: str(p) for i, p in pipes.items()}  # no MIG GPU
    for i, pipe in pipes.items():
        # Each daemon sees only its GPU, by UUID, and logs in its own directory.
        assert (pipe / "started-with").read_text().split() == [
            f"GPU-{i}",
            str(root / f"gpu{i}" / "log"),
        ]
        assert oct(pipe.stat().st_mode & 0o777) == "0o755"  # jobs of other accounts
    pids = [pid_of(p) for p in pipes.values()]
    assert len(set(pids)) == 2 and not any(pid_gone(p) for p in pids)

    d.stop()
    for pid in pids:
        wait_for(lambda p=pid: pid_gone(p), f"MPS daemon {pid} to end", timeout=5)


def test_a_running_daemon_is_reused_after_an_agent_restart(
    tmp_path: Path, fake_path: dict[str, str]
) -> None:
    root = tmp_path / "mps"
    daemons(root, fake_path, gpu(0)).start()
    pid = pid_of(root / "gpu0" / "pipe")
    (root / "gpu0" / "pipe" / "started-with").unlink()

    again = daemons(root, fake_path, gpu(0))
    again.start()
    assert pid_of(root / "gpu0" / "pipe") == pid  # the same daemon, not a second one
    assert not (root / "gpu0" / "pipe" / "started-with").exists()
    again.stop()
    wait_for(lambda: pid_gone(pid), "the re-used daemon to end", timeout=5)


def test_a_stale_pid_file_does_not_count_as_a_daemon(
    tmp_path: Path, fake_path: dict[str, str]
) -> None:
    pipe = tmp_path / "mps" / "gpu0" / "pipe"
    pipe.mkdir(parents=True)
    (pipe / PID_FILE).write_text(f"{os.getpid()}\n")  # alive, but not MPS
    daemons(tmp_path / "mps", fake_path, gpu(0)).start()
    assert pid_of(pipe) != os.getpid()


def test_a_daemon_that_ignores_quit_is_stopped_by_pid(
    tmp_path: Path, fake_path: dict[str, str]
) -> None:
    root = tmp_path / "mps"
    d = daemons(root, fake_path, gpu(0))
    d.start()
    pid = pid_of(root / "gpu0" / "pipe")
    (Path(fake_path["PATH"].split(":")[0]) / "nvidia-cuda-mps-control").write_text(
        FAKE_CONTROL.replace('touch "$pipe/quit"', ":")
    )
    d.stop()
    wait_for(lambda: pid_gone(pid), "SIGTERM to end the daemon", timeout=5)


def test_start_fails_clearly_without_the_program_or_when_a_daemon_fails(
    tmp_path: Path, fake_path: dict[str, str]
) -> None:
    with pytest.raises(MpsError, match="nvidia-cuda-mps-control is not on PATH"):
        daemons(tmp_path / "a", {"PATH": str(tmp_path / "nowhere")}, gpu(0)).start()
    with pytest.raises(MpsError, match="exited with code 3: cannot open the device"):
        daemons(tmp_path / "b", {**fake_path, "FAIL_START": "1"}, gpu(0)).start()


def test_the_agent_keeps_the_daemons_while_jobs_are_left_running(
    tmp_path: Path, fake_path: dict[str, str]
) -> None:
    mps = NodeMps(None, daemons(tmp_path / "mps", fake_path, gpu(0)))
    assert mps.daemons is not None
    mps.settings = mps.daemons.start()
    pid = pid_of(tmp_path / "mps" / "gpu0" / "pipe")
    note = mps.close(jobs_left=2)
    assert note is not None and "keep running for the 2 job(s) left" in note
    assert not pid_gone(pid)
    assert mps.close(jobs_left=0) is None
    wait_for(lambda: pid_gone(pid), "the daemon to end", timeout=5)


def test_modes(tmp_path: Path) -> None:
    said: list[str] = []
    common = {"state_dir": tmp_path, "gpus": [gpu(0)], "euid": 1000, "say": said.append}
    assert NodeMps.open("off", None, **common).settings is None
    external = NodeMps.open("external", tmp_path / "pipe", **common)
    assert external.settings == MpsSettings({0: str(tmp_path / "pipe")})
    assert external.daemons is None
    with pytest.raises(MpsError, match="--mps must be one of off, external, start"):
        NodeMps.open("on", None, **common)
