"""Jobs as plain host processes, each in its own session and process group.

A job is started as ``/bin/sh -c SHIM corral-job WORKDIR CMD ARGS...`` with the job
directory as its working directory. The shim runs the command (in WORKDIR, if one was
given) and records its exit status in ``exit-code``, so the status survives an agent that
died or restarted meanwhile; output goes straight from the job to ``output.log`` (no pipe
through the agent), so the job survives the agent too.

The shim writes ``exit-code`` relative to its own working directory, entered by the agent
before the account switch, and the command enters WORKDIR in a subshell as the job's
account: a root agent's state directory is often below a directory the job's account may
not enter (``/root``), so an absolute path there would be unwritable for the job.

Where the node has cgroups (`corral.agent.runtime.cgroups`) each job gets its own, with
the CPU and memory limits it asked for. The shim waits at its first line, reading its
stdin, until the agent has moved it into that cgroup and recorded the job in meta.json;
only then does the agent write "go", so nothing of the job ever runs outside its limits,
whichever account it runs as. An OOM kill the cgroup counted is reported as such.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from corral.agent import jobdirs
from corral.agent.jobdirs import JobKey, JobMeta
from corral.agent.mps import MpsSettings
from corral.agent.runtime import cgroups as cgroups_mod
from corral.agent.runtime.base import JobExit, JobHandle, StartError
from corral.agent.runtime.cgroups import CgroupError, Cgroups, JobCgroup
from corral.agent.runtime.env import job_environment
from corral.agent.usermap import JobAccount
from corral.core.quantities import format_bytes
from corral.core.schemas import Assignment

log = logging.getLogger(__name__)

# The shell traps TERM/INT/HUP with a handler (":"), not with an ignore (""): ignored
# signals stay ignored in the programs it starts, while trapped ones are reset to their
# default there. So the command is killed by the group's SIGTERM as usual, and the shell,
# which only runs ":" once the command has ended, lives on to record the status. A death
# by signal N shows as $? = 128+N. Only SIGKILL (after the grace period) takes the shell
# too; the agent then knows the code itself. The code is written in place, not renamed
# into place: the agent reads it only once the shell is gone, so never half-written.
#
# The subshell "( ... )" resets the traps to default before it runs anything, as POSIX
# requires, but a signal that lands between its fork and that reset runs the inherited
# ":" and is lost (measured: 1 stop in 10 on a loaded machine). So the subshell's first
# act is to create the "started" marker, and the agent holds back a stop's SIGTERM until
# the marker exists; from then on the default action is in place and nothing is lost.
#
# Before all that, the gate (see the module docstring): a shim that reads anything but
# "go" (the agent died before it was done with the start) runs nothing.
SHIM = (
    'read -r go; exec </dev/null; [ "$go" = go ] || exit 125; '
    "trap : TERM INT HUP; "
    "workdir=$1; shift; "
    f"(: > {jobdirs.STARTED}; "
    'if [ -n "$workdir" ]; then cd -- "$workdir" || exit; fi; exec "$@"); rc=$?; '
    f'echo "$rc" > {jobdirs.EXIT_CODE}; exit "$rc"'
)
SHIM_NAME = "corral-job"  # $0 of the shim: what its own error messages are prefixed with
# psutil derives start times from boot time, which can shift by up to a second.
_CREATE_TIME_SLACK_SECONDS = 1.0


@dataclass
class _Tracked:
    handle: JobHandle
    pgid: int
    popen: subprocess.Popen[bytes] | None  # our child: started by this runtime
    proc: psutil.Process | None  # adopted and alive when adopted
    alive_at_adopt: bool = False
    stop_grace: float | None = None  # seconds, set once stop() was called
    kill_at: float | None = None  # monotonic time at which SIGKILL is due
    term_pending: bool = False  # a stop's SIGTERM waits for the "started" marker
    killed: bool = False
    cgroup: JobCgroup | None = None  # None: the job runs without limits


class ProcessRuntime:
    """Runs jobs as host processes under ``state_dir/jobs``.

    ``clock`` is monotonic seconds (injectable for tests); ``agent_env`` is the
    environment a job's clean base copies PATH and LANG from (default: ``os.environ``).
    ``on_exit``, when given, is called (from a small waiter thread per job) as soon as
    a job started here ends, so the supervisor can `poll` it at once instead of on
    its next tick. ``cgroups`` is how jobs get their CPU and memory limits (see
    `cgroups.detect`); None: they run without. ``mps``: where jobs on shared GPUs find
    the node's MPS daemons (`corral.agent.mps`); None: MPS is off.
    """

    name = "process"

    def __init__(
        self,
        state_dir: Path,
        *,
        node_name: str,
        gpus_simulated: bool,
        clock: Callable[[], float] = time.monotonic,
        agent_env: Mapping[str, str] | None = None,
        on_exit: Callable[[], None] | None = None,
        cgroups: Cgroups | None = None,
        mps: MpsSettings | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.mps = mps
        self.cgroups = cgroups or _NO_CGROUPS
        self._cgroup_group = cgroups_mod.agent_group(node_name, state_dir)
        self._unremoved: list[JobCgroup] = []  # cgroups of ended jobs, still busy
        self._on_exit = on_exit
        self.node_name = node_name
        self.gpus_simulated = gpus_simulated
        self._clock = clock
        self._agent_env = os.environ if agent_env is None else agent_env
        self._tracked: dict[JobKey, _Tracked] = {}

    # ---------------------------------------------------------------- start

    def start(self, assignment: Assignment, account: JobAccount) -> JobHandle:
        """Start the job's process group now. Raises `StartError` with the reason."""
        workdir = assignment.workdir
        if workdir is not None and not Path(workdir).is_dir():
            raise StartError(f"working directory {workdir} does not exist on node {self.node_name}")
        key = JobKey(assignment.job_id, assignment.attempt, assignment.rank)
        directory = jobdirs.job_dir(self.state_dir, key)
        directory.parent.mkdir(parents=True, exist_ok=True)
        # Left over from a start that never got as far as meta.json (the supervisor never
        # starts an attempt it has a record of): begin afresh.
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o700)
        log_fd = os.open(
            directory / jobdirs.OUTPUT,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW,
            0o644,
        )
        cgroup = None
        try:
            cgroup = self._new_cgroup(assignment, key)
            if account.switch:
                os.chown(directory, account.uid, account.gid)
            popen = self._spawn(assignment, account, directory, log_fd, cgroup)
        except StartError:
            shutil.rmtree(directory, ignore_errors=True)
            if cgroup is not None:
                self._remove_cgroups(cgroup)
            raise
        finally:
            os.close(log_fd)
        started_at = datetime.now(UTC)
        meta = JobMeta(
            job_id=assignment.job_id,
            attempt=assignment.attempt,
            name=assignment.name,
            pid=popen.pid,
            pgid=popen.pid,  # start_new_session: the shell leads its own group
            create_time=_create_time(popen.pid),
            started_at=started_at.isoformat(),
            user=account.name,
            uid=account.uid,
            grace_seconds=assignment.grace_seconds,
            rank=assignment.rank,
            world_size=assignment.world_size,
            cgroups=[] if cgroup is None else [str(d) for d in cgroup.dirs],
        )
        # An agent crash before this write leaves a job it could not re-adopt: the shim
        # is then never told to go and runs nothing; the server hears "no record".
        try:
            jobdirs.write_meta(directory, meta)
        except BaseException:
            _open_gate(popen, go=False)
            raise
        _open_gate(popen, go=True)
        handle = JobHandle(
            job_id=assignment.job_id,
            attempt=assignment.attempt,
            name=assignment.name,
            job_dir=directory,
            pid=popen.pid,
            started_at=started_at,
            grace_seconds=assignment.grace_seconds,
            rank=assignment.rank,
            world_size=assignment.world_size,
            note=self.cgroups.limits_note(assignment.cpus, assignment.memory_bytes),
        )
        self._tracked[key] = _Tracked(
            handle=handle, pgid=popen.pid, popen=popen, proc=None, cgroup=cgroup
        )
        if self._on_exit is not None and hasattr(os, "waitid"):
            threading.Thread(
                target=_notify_exit,
                args=(popen.pid, self._on_exit),
                name=f"corral-job-{jobdirs.dir_name(key)}-exit",
                daemon=True,
            ).start()
        return handle

    def _new_cgroup(self, assignment: Assignment, key: JobKey) -> JobCgroup | None:
        """The job's cgroup with its limits; None when the node has none to give."""
        self._remove_cgroups()  # a good moment to retry the ones that were still busy
        if self.cgroups.version is None:
            return None
        try:
            return self.cgroups.create(
                self._cgroup_group,
                jobdirs.dir_name(key),
                cpus=assignment.cpus,
                memory_bytes=assignment.memory_bytes,
            )
        except CgroupError as exc:
            raise StartError(f"could not set up the job's cgroup: {exc}") from exc

    def _spawn(
        self,
        assignment: Assignment,
        account: JobAccount,
        directory: Path,
        log_fd: int,
        cgroup: JobCgroup | None,
    ) -> subprocess.Popen[bytes]:
        """Start the shim, held at its gate, in ``cgroup``."""
        env = job_environment(
            assignment,
            account,
            node_name=self.node_name,
            gpus_simulated=self.gpus_simulated,
            agent_env=self._agent_env,
            mps=self.mps,
        )
        # No workdir: the shell's own working directory, the job directory (entered by the
        # agent, so the job's account needs no access to the directories above it).
        argv = ["/bin/sh", "-c", SHIM, SHIM_NAME, assignment.workdir or "", *assignment.command]
        identity: dict[str, Any] = {}
        if account.switch:
            identity = {
                "user": account.uid,
                "group": account.gid,
                "extra_groups": list(account.groups),
            }
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,  # the gate
                stdout=log_fd,
                stderr=log_fd,
                cwd=directory,
                env=env,
                start_new_session=True,
                **identity,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise StartError(f"could not start the job's process: {exc}") from exc
        if cgroup is not None:
            try:
                cgroup.join(popen.pid)
            except CgroupError as exc:
                _open_gate(popen, go=False)
                popen.kill()
                popen.wait()
                raise StartError(f"could not put the job in its cgroup: {exc}") from exc
        return popen

    # ---------------------------------------------------------------- adopt

    def adopt(self, job_dir: Path) -> JobHandle | None:
        """Supervise a job found in ``job_dir`` after an agent restart (see `Runtime`)."""
        meta = jobdirs.read_meta(job_dir)
        if meta is None:
            return None
        if meta.key in self._tracked:
            return self._tracked[meta.key].handle
        handle = JobHandle(
            job_id=meta.job_id,
            attempt=meta.attempt,
            name=meta.name,
            job_dir=job_dir,
            pid=meta.pid,
            started_at=datetime.fromisoformat(meta.started_at),
            grace_seconds=meta.grace_seconds,
            adopted=True,
            rank=meta.rank,
            world_size=meta.world_size,
        )
        proc = _find_process(meta)
        self._tracked[meta.key] = _Tracked(
            handle=handle,
            pgid=meta.pgid,
            popen=None,
            proc=proc,
            alive_at_adopt=proc is not None,
            cgroup=JobCgroup.adopt(meta.cgroups, jobdirs.dir_name(meta.key)),
        )
        return handle

    # ---------------------------------------------------------------- poll and stop

    def poll(self, handle: JobHandle) -> JobExit | None:
        """None while the job's shell lives; else its exit, once (the handle is then done).

        Sends the SIGKILL of a `stop` whose grace period has run out.
        """
        t = self._tracked.get(handle.key)
        if t is None:
            raise KeyError(f"job {handle.key} is not supervised by this runtime")
        if self._leader_alive(t):
            self._send_pending_term(t)
            if t.kill_at is not None and not t.killed and self._clock() >= t.kill_at:
                self._signal(t, signal.SIGKILL)
                t.killed = True
            return None
        result = self._exit_of(t)
        if t.cgroup is not None:
            result = _with_oom_kills(result, t.cgroup, stop_killed=t.killed)
        if t.popen is not None or t.alive_at_adopt:
            # Processes the job left behind (backgrounded, never waited for) must not
            # keep holding its GPUs once it is reported as ended. The group id cannot
            # have been reused while any of them is alive, so this hits nothing else.
            self._signal(t, signal.SIGKILL)
        if t.cgroup is not None:
            self._remove_cgroups(t.cgroup)  # and any that left the group: all in there
        del self._tracked[handle.key]
        return result

    def stop(self, handle: JobHandle, grace_seconds: float) -> None:
        """SIGTERM to the job's whole process group now (or, in the first instant of its
        life, as soon as its command is being started); SIGKILL once ``grace_seconds``
        have passed (sent by `poll`). Repeated calls do not restart the grace period."""
        t = self._tracked.get(handle.key)
        if t is None or t.stop_grace is not None:
            return
        t.stop_grace = grace_seconds
        if not self._leader_alive(t):
            return
        if grace_seconds <= 0:
            self._signal(t, signal.SIGKILL)
            t.killed = True
        else:
            t.kill_at = self._clock() + grace_seconds
            t.term_pending = True
            self._send_pending_term(t)

    def running(self) -> list[JobHandle]:
        return [t.handle for t in self._tracked.values()]

    # ---------------------------------------------------------------- helpers

    def _leader_alive(self, t: _Tracked) -> bool:
        if t.popen is not None:
            return t.popen.poll() is None
        return t.proc is not None and _alive(t.proc)

    def _remove_cgroups(self, *ended: JobCgroup) -> None:
        """Delete the cgroups of ended jobs (killing what is left in them); the ones
        still busy are tried again on the next start or end."""
        self._unremoved = [cg for cg in self._unremoved if not cg.remove(wait_seconds=0)]
        for cg in ended:
            if not cg.remove():
                log.warning("cgroup %s still busy; will retry", cg.dirs[0])
                self._unremoved.append(cg)

    def _send_pending_term(self, t: _Tracked) -> None:
        # See SHIM: a SIGTERM sent before the marker exists could be swallowed.
        if t.term_pending and (t.handle.job_dir / jobdirs.STARTED).exists():
            t.term_pending = False
            self._signal(t, signal.SIGTERM)

    def _signal(self, t: _Tracked, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(t.pgid, sig)

    def _exit_of(self, t: _Tracked) -> JobExit:
        recorded = jobdirs.read_exit_code(t.handle.job_dir)
        stopped = _stop_note(t)
        if t.popen is not None and t.popen.returncode is not None:
            rc = t.popen.returncode
            if rc < 0:  # the shell itself was killed: only SIGKILL does that
                return JobExit(128 - rc, stopped or f"killed by {_signame(-rc)}")
            return JobExit(rc, stopped)
        if recorded is not None:
            return JobExit(recorded, stopped)
        if t.killed:
            return JobExit(128 + signal.SIGKILL, stopped)
        if t.alive_at_adopt:
            return JobExit(None, "ended without recording an exit code (its shell was killed)")
        return JobExit(None, "ended while the agent was down; exit code unknown")


_NO_CGROUPS = cgroups_mod.disabled("cgroups not in use")


def _open_gate(popen: subprocess.Popen[bytes], *, go: bool) -> None:
    """Let the shim waiting at its gate run the command (``go``), or end it unrun."""
    stdin = popen.stdin
    if stdin is None:
        return
    try:
        if go:
            stdin.write(b"go\n")
            stdin.flush()
    except BrokenPipeError:
        pass  # the shim is gone already: its poll says how it ended
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


def _with_oom_kills(result: JobExit, cgroup: JobCgroup, *, stop_killed: bool) -> JobExit:
    """``result``, saying so when the kernel killed any of the job's processes for
    running out of memory (a SIGKILL a stop sent is not that)."""
    kills = cgroup.oom_kills()
    if kills == 0:
        return result
    limit = cgroup.memory_limit()
    its_limit = "" if limit is None else f" (its memory limit is {format_bytes(limit)})"
    if result.exit_code == 128 + signal.SIGKILL and not stop_killed:
        return JobExit(
            result.exit_code, f"killed by the kernel for running out of memory{its_limit}"
        )
    which = "a process" if kills == 1 else f"{kills} processes"
    note = f"{which} of it killed by the kernel for running out of memory{its_limit}"
    return JobExit(result.exit_code, f"{result.message}; {note}" if result.message else note)


def _notify_exit(pid: int, on_exit: Callable[[], None]) -> None:
    """Wait for our child ``pid`` to end, *without* reaping it (``poll`` does that and
    reads its status), then call ``on_exit``."""
    with contextlib.suppress(OSError):  # already reaped: it has ended all the same
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    on_exit()


def _stop_note(t: _Tracked) -> str | None:
    if t.stop_grace is None:
        return None
    if t.killed:
        return f"stopped: killed with SIGKILL after the {t.stop_grace:g} s grace period"
    return "stopped with SIGTERM"


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return time.time()  # it died at once; adoption will find it gone either way


def _find_process(meta: JobMeta) -> psutil.Process | None:
    """The job's shell if it is still alive; a reused pid is not it."""
    try:
        proc = psutil.Process(meta.pid)
        if abs(proc.create_time() - meta.create_time) > _CREATE_TIME_SLACK_SECONDS:
            return None
        if os.getpgid(meta.pid) != meta.pgid:
            return None
    except (psutil.Error, OSError):
        return None
    return proc if _alive(proc) else None


def _alive(proc: psutil.Process) -> bool:
    try:
        # A zombie has ended; its parent (init, or a test's old runtime) just has not
        # reaped it yet.
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
