"""CUDA MPS for jobs on part of a shared GPU (``--gpus 0.5``, ``--gpu-memory 20GiB``).

NVIDIA's Multi-Process Service lets the CUDA processes of a GPU share it through one
MPS server, and its clients take two limits from their own environment, which the
driver then enforces (docs/gpu-sharing.md says what that does and does not guarantee):

``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``
    ``"0=<N>M"``: the client may allocate at most N MiB on its device 0 (the job sees
    one GPU); a larger allocation fails with "out of memory" in the job.
``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``
    the share of the GPU's SMs (streaming multiprocessors) the client may use, in
    percent: the job's fraction of the GPU times 100 (set for ``--gpus 0.5``, not for
    a job that asked only for memory).

A job reaches a control daemon through ``CUDA_MPS_PIPE_DIRECTORY``; when none answers
there, CUDA runs the job without MPS and the limits do not apply (the watchdog in
`corral.agent.gpushare` still does). Modes (``corral agent --mps``):

``off`` (the default)
    no MPS variables: jobs on shared GPUs are held to their share by the watchdog only.
``external``
    the node runs a control daemon of its own (e.g. a systemd unit running
    ``nvidia-cuda-mps-control -d``) whose pipe directory is ``--mps-directory``
    (default ``/tmp/nvidia-mps``, MPS's own default). Every GPU's jobs use it.
``start``
    the agent starts one control daemon per GPU (GPUs in MIG mode are left out), each
    with ``CUDA_VISIBLE_DEVICES`` = that GPU's UUID and its own pipe and log
    directories, ``<dir>/gpu<N>/pipe`` and ``<dir>/gpu<N>/log`` under
    ``--mps-directory`` (default ``/run/corral-mps`` for a root agent, whose jobs run
    as other accounts and must reach the pipes, else ``<state dir>/mps``). A daemon
    already running there (its ``nvidia-cuda-mps-control.pid`` names a live MPS
    process) is re-used, so an agent restart does not disturb running jobs. At
    shutdown the agent stops them (``quit`` through the control pipe, then SIGTERM by
    PID) — unless jobs are still running here, which keep them.

A job given the MPS variables also gets ``CUDA_VISIBLE_DEVICES`` = its GPU's UUID
rather than its index: an MPS server started for some GPUs renumbers them for its
clients, and a UUID means the same device either way (NVIDIA's advice).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from corral.core.schemas import Assignment, GpuInfo

MODES = ("off", "external", "start")
CONTROL = "nvidia-cuda-mps-control"
PID_FILE = "nvidia-cuda-mps-control.pid"  # written by the daemon in its pipe directory
DEFAULT_EXTERNAL_DIRECTORY = Path("/tmp/nvidia-mps")  # noqa: S108 (MPS's own default)
DEFAULT_ROOT_DIRECTORY = Path("/run/corral-mps")
MIB = 1024**2

_T = TypeVar("_T")


class MpsError(Exception):
    """MPS cannot be used as configured; ``str(exc)`` is one line for the operator."""


@dataclass(frozen=True)
class MpsSettings:
    """Where the jobs of each GPU (by index) find their MPS control daemon."""

    pipe_directories: Mapping[int, str] = field(default_factory=dict)

    def pipe_directory(self, gpu_index: int) -> str | None:
        return self.pipe_directories.get(gpu_index)


def mps_environment(assignment: Assignment, mps: MpsSettings | None) -> dict[str, str]:
    """The MPS variables of a job on part of a shared GPU (see the module's doc); empty
    for other jobs, or when MPS is off or not set up for the job's GPU."""
    shared = assignment.gpu_fraction is not None or assignment.gpu_memory_bytes is not None
    if mps is None or not shared or len(assignment.gpu_ids) != 1:
        return {}
    if any(u.startswith("MIG-") for u in assignment.gpu_uuids):
        return {}  # a MIG instance is isolated by the hardware already
    pipe = mps.pipe_directory(assignment.gpu_ids[0])
    if pipe is None:
        return {}
    env = {"CUDA_MPS_PIPE_DIRECTORY": pipe}
    if assignment.gpu_uuids:
        env["CUDA_VISIBLE_DEVICES"] = assignment.gpu_uuids[0]
    if assignment.gpu_memory_bytes is not None:
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = pinned_memory_limit(assignment.gpu_memory_bytes)
    if assignment.gpu_fraction is not None:
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = active_thread_percentage(assignment.gpu_fraction)
    return env


def pinned_memory_limit(share_bytes: int) -> str:
    """``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` for a share of ``share_bytes`` on the job's
    only device: ``"0=<MiB>M"``, rounded down to whole MiB (at least 1)."""
    return f"0={max(1, share_bytes // MIB)}M"


def active_thread_percentage(fraction: float) -> str:
    """``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` for a fraction of a GPU (0.5 → ``"50"``):
    a whole percentage from 1 to 100."""
    return str(min(100, max(1, round(fraction * 100))))


def default_directory(mode: str, state_dir: Path, euid: int) -> Path:
    """``--mps-directory`` when it is not given (see the module's doc)."""
    if mode == "external":
        return DEFAULT_EXTERNAL_DIRECTORY
    return DEFAULT_ROOT_DIRECTORY if euid == 0 else state_dir / "mps"


def external_settings(directory: Path, gpus: Sequence[GpuInfo]) -> tuple[MpsSettings, str]:
    """The settings of ``--mps external`` and a line saying what was found."""
    settings = MpsSettings({g.index: str(directory) for g in gpus})
    if (directory / PID_FILE).exists() or (directory / "control").exists():
        return settings, f"MPS: jobs on shared GPUs use the control daemon at {directory}"
    return settings, (
        f"MPS: WARNING: no control daemon seems to run at {directory} (no control pipe "
        "there); jobs on shared GPUs get the MPS variables anyway, and CUDA runs them "
        "without MPS (and without its limits) while none answers"
    )


@dataclass
class _Daemon:
    gpu_index: int
    uuid: str
    pipe: Path
    log: Path
    pid: int | None = None


class MpsDaemons:
    """One MPS control daemon per GPU, started (or re-used) by `start` and stopped by
    `stop`. ``executable`` is looked up on ``environ``'s PATH; ``environ`` is what the
    daemons inherit (plus their own variables). ``timeout`` bounds each wait (seconds).
    """

    def __init__(
        self,
        directory: Path,
        gpus: Sequence[GpuInfo],
        *,
        say: Callable[[str], None],
        executable: str = CONTROL,
        environ: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.directory = directory
        self._say = say
        self._environ = dict(os.environ if environ is None else environ)
        self._executable = executable
        self._timeout = timeout
        self._daemons = [
            _Daemon(
                g.index,
                g.uuid,
                directory / f"gpu{g.index}" / "pipe",
                directory / f"gpu{g.index}" / "log",
            )
            for g in gpus
            if not g.mig
        ]

    def start(self) -> MpsSettings:
        """Start (or re-use) every GPU's daemon; the settings for the jobs. Raises
        `MpsError` when the program is missing or a daemon does not come up (the ones
        started by then are stopped again)."""
        program = shutil.which(self._executable, path=self._environ.get("PATH"))
        if program is None:
            raise MpsError(
                f"--mps start: {self._executable} is not on PATH (it comes with the NVIDIA "
                "driver's compute utilities); install it, or run the agent with --mps off"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)  # jobs of other accounts must reach their pipes
        try:
            for daemon in self._daemons:
                self._start_one(program, daemon)
        except MpsError:
            self.stop()
            raise
        return MpsSettings({d.gpu_index: str(d.pipe) for d in self._daemons})

    def _start_one(self, program: str, daemon: _Daemon) -> None:
        for path in (daemon.pipe.parent, daemon.pipe, daemon.log):
            path.mkdir(exist_ok=True)
            path.chmod(0o755)
        running = _live_pid(daemon.pipe / PID_FILE)
        if running is not None:
            daemon.pid = running
            self._say(f"MPS: GPU {daemon.gpu_index}: re-using the daemon (pid {running})")
            return
        try:
            done = subprocess.run(
                [program, "-d"],
                env=self._env(daemon),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self._timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MpsError(f"MPS: GPU {daemon.gpu_index}: {program} -d failed: {exc}") from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).decode(errors="replace").strip()[-500:]
            raise MpsError(
                f"MPS: GPU {daemon.gpu_index}: {program} -d exited with code "
                f"{done.returncode}" + (f": {said}" if said else "")
            )
        daemon.pid = _wait_for(lambda: _live_pid(daemon.pipe / PID_FILE), self._timeout)
        if daemon.pid is None:
            raise MpsError(
                f"MPS: GPU {daemon.gpu_index}: the control daemon wrote no live pid to "
                f"{daemon.pipe / PID_FILE} within {self._timeout:g} s (see {daemon.log})"
            )
        self._say(
            f"MPS: GPU {daemon.gpu_index}: control daemon started (pid {daemon.pid}, "
            f"pipes in {daemon.pipe})"
        )

    def stop(self) -> None:
        """Stop every daemon started or re-used here: ``quit`` through its control pipe,
        then SIGTERM and at last SIGKILL to its PID if it is still there."""
        program = shutil.which(self._executable, path=self._environ.get("PATH"))
        for daemon in self._daemons:
            pid = daemon.pid
            if pid is None or not _is_mps(pid):
                continue
            if program is not None:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    subprocess.run(
                        [program],
                        env=self._env(daemon),
                        input=b"quit\n",
                        capture_output=True,
                        timeout=self._timeout,
                        check=False,
                    )
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if _wait_for(_gone(pid), self._timeout / 2):
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                self._say(f"MPS: GPU {daemon.gpu_index}: sent {sig.name} to the daemon ({pid})")
            daemon.pid = None
            self._say(f"MPS: GPU {daemon.gpu_index}: control daemon stopped")

    def _env(self, daemon: _Daemon) -> dict[str, str]:
        return {
            **self._environ,
            "CUDA_VISIBLE_DEVICES": daemon.uuid,
            "CUDA_MPS_PIPE_DIRECTORY": str(daemon.pipe),
            "CUDA_MPS_LOG_DIRECTORY": str(daemon.log),
        }


def _gone(pid: int) -> Callable[[], bool]:
    return lambda: not _is_mps(pid)


def _live_pid(pid_file: Path) -> int | None:
    """The pid in a daemon's pid file when that process is alive and an MPS program."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 1 and _is_mps(pid) else None


def _is_mps(pid: int) -> bool:
    """Whether ``pid`` is alive and an MPS program (``nvidia-cuda-mps-*`` as its program
    or, for a script, its first argument): a pid file can outlive its daemon, and the
    pid be reused by another process."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2]
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2 :][:1]
    names = (a.rsplit(b"/", 1)[-1] for a in argv)
    return state != b"Z" and any(n.startswith(b"nvidia-cuda-mps") for n in names)


def _wait_for(probe: Callable[[], _T], timeout: float) -> _T | None:
    """Poll ``probe`` until it answers something truthy (returned), or ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


class NodeMps:
    """This node's MPS as configured: the settings jobs get (None: off) and the
    daemons the agent runs (None unless ``--mps start``)."""

    def __init__(self, settings: MpsSettings | None, daemons: MpsDaemons | None = None) -> None:
        self.settings = settings
        self.daemons = daemons

    @classmethod
    def open(
        cls,
        mode: str,
        directory: Path | None,
        *,
        state_dir: Path,
        gpus: Sequence[GpuInfo],
        euid: int,
        say: Callable[[str], None],
    ) -> NodeMps:
        """Set up ``--mps MODE`` for ``gpus``. Raises `MpsError` when it cannot be."""
        if mode not in MODES:
            raise MpsError(f"--mps must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "off":
            return cls(None)
        if not gpus:
            say("MPS: this node has no GPUs; --mps does nothing here")
            return cls(None)
        where = directory or default_directory(mode, state_dir, euid)
        if mode == "external":
            settings, line = external_settings(where, gpus)
            say(line)
            return cls(settings)
        daemons = MpsDaemons(where, gpus, say=say)
        return cls(daemons.start(), daemons)

    def close(self, jobs_left: int) -> str | None:
        """Stop the daemons the agent runs, unless jobs are left running on the node
        (MPS clients lose their GPU context with their server): then a line saying so."""
        if self.daemons is None:
            return None
        if jobs_left:
            return (
                f"MPS: the control daemons keep running for the {jobs_left} job(s) left "
                "here; the next agent start re-uses them"
            )
        self.daemons.stop()
        return None
