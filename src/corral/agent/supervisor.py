"""The supervisor: makes the jobs on this node match the server's desired state.

What it supervises is a worker: one (job, attempt, rank), a `JobKey`. A job that is not
a gang has one worker, rank 0; a gang's workers are separate assignments, several of
which may land on this node, and each is its own process, job directory, log and
reports. Fencing, "an older attempt is still ending here" and ``after`` are per job.

Each `tick` (at once when a job it started exits or a new desired state arrives; else
every second, or every 0.1 s while a stop waits for its SIGKILL deadline):

- starts assignments that are not running and not finished here, unless a newer attempt
  of the same job was already seen (fencing after a partition);
- stops assignments marked ``stop`` (a stop of one worker of a job attempt stops all of
  its workers here) and local workers the server no longer lists;
- stops the workers the agent itself asked to stop (`Supervisor.request_stop`, from the
  GPU memory watchdog's thread), and gives that reason in their exit reports;
- answers for assignments it knows nothing about ("stopped before it started", "the
  agent has no record of this job");
- polls the runtime; an ended job gets its final log flush, then its "exited" report.

Finished attempts are remembered (in memory and by their job directories) so a re-sent
assignment is never started twice. All of this runs on the supervisor thread only; the
other threads reach it through the thread-safe `DesiredState`, `ReportQueue` and
`LogShipping`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from corral.agent import jobdirs
from corral.agent.jobdirs import JobKey, describe
from corral.agent.logship import LogShipping
from corral.agent.runtime.base import JobExit, JobHandle, Runtime, StartError
from corral.agent.sync import DesiredState, ReportQueue
from corral.agent.usermap import AccountError, UserMapper
from corral.core.schemas import Assignment, JobReport
from corral.core.states import JobState

log = logging.getLogger(__name__)

FINISHED_RETENTION_SECONDS = 7 * 86400  # reported job directories are kept this long
PRUNE_INTERVAL_SECONDS = 3600.0
MAX_MESSAGE_CHARS = 4000  # JobReport.message

NEVER_STARTED = "stopped before it started"
NO_RECORD = "the agent has no record of this job (its state on the node was lost)"


@dataclass
class _Live:
    handle: JobHandle
    stop_reason: str | None = None  # set once it was asked to stop
    why: str | None = None  # the agent's own reason (request_stop), said in its exit report


class Supervisor:
    """Reconciles desired and actual jobs. ``clock`` is monotonic seconds, ``wall`` is
    seconds since the epoch; both injectable for tests."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        usermap: UserMapper,
        desired: DesiredState,
        reports: ReportQueue,
        logs: LogShipping,
        state_dir: Path,
        say: Callable[[str], None],
        interval_seconds: float = 0.1,
        idle_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = runtime
        self.usermap = usermap
        self.desired = desired
        self.reports = reports
        self.logs = logs
        self.state_dir = state_dir
        self.interval_seconds = interval_seconds
        self.idle_seconds = idle_seconds
        self.wake = threading.Event()
        self.ticks = 0
        self._say = say
        self._clock = clock
        self._wall = wall
        self._live: dict[JobKey, _Live] = {}
        # Session id (the worker's shim pid) -> (job id, rank) of the workers alive here,
        # replaced whole on every change so other threads (monitoring) can read it.
        self._sessions: dict[int, tuple[int, int]] = {}
        self._finished: dict[JobKey, float] = {}  # key → wall time it finished
        self._max_attempt: dict[int, int] = {}
        self._said: set[tuple[str, JobKey]] = set()
        self._next_prune = 0.0
        self._stop_requests: list[tuple[JobKey, str]] = []  # from other threads
        self._requests_lock = threading.Lock()

    # ---------------------------------------------------------------- start-up

    def recover(self) -> None:
        """Re-adopt the jobs of a previous agent run; remember the ones it reported."""
        self._prune()
        for key, directory in jobdirs.list_job_dirs(self.state_dir):
            if jobdirs.is_reported(directory):
                self._note_attempt(key)
                self._finished[key] = self._wall()  # pruned by its directory's age anyway
                continue
            handle = self.runtime.adopt(directory)
            if handle is None:
                continue  # a start that never got going: no process was ever recorded
            key = handle.key  # its meta.json, which the agent wrote, names the worker
            self._note_attempt(key)
            self._live[key] = _Live(handle)
            self._publish_sessions()
            self.logs.add(key, directory)
            self._say(f"{_job(handle)}: re-adopted after the agent restarted ({_where(handle)})")
        self._report_strays()

    # ---------------------------------------------------------------- the loop

    def run(self, stop: threading.Event) -> None:
        """Thread body: tick until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug must not leave every job unsupervised
                log.exception("supervisor tick failed")
            self.wake.wait(self._pause())
            self.wake.clear()

    def _pause(self) -> float:
        """How long to sleep unless woken: ``interval_seconds`` while a stop is under way
        (its SIGKILL is due at a deadline), else ``idle_seconds``. Exits of the jobs it
        started and new desired states wake it at once; the idle tick catches the exits
        of re-adopted jobs (not its children) and anything else that slipped by."""
        if any(live.stop_reason is not None for live in self._live.values()):
            return self.interval_seconds
        return self.idle_seconds

    def tick(self) -> None:
        snapshot = self.desired.snapshot()
        with self.reports.hold():  # this pass's reports go out together
            if snapshot is not None:
                self._reconcile(snapshot[1])
            self._take_stop_requests()
            self._poll()
        if self._clock() >= self._next_prune:
            self._prune()
        self.ticks += 1

    def sessions(self) -> dict[int, tuple[int, int]]:
        """Session id -> (job id, rank) of every worker alive here; safe from any thread."""
        return self._sessions

    def _publish_sessions(self) -> None:
        self._sessions = {
            live.handle.pid: (key.job_id, key.rank)
            for key, live in self._live.items()
            if live.handle.pid is not None
        }

    def request_stop(self, key: JobKey, reason: str) -> None:
        """Stop worker ``key`` for the agent's own ``reason`` (e.g. the GPU memory
        watchdog), which its exit report then gives; safe from any thread. Done on the
        supervisor thread at its next tick; a worker not running here is left alone."""
        with self._requests_lock:
            self._stop_requests.append((key, reason))
        self.wake.set()

    def _take_stop_requests(self) -> None:
        with self._requests_lock:
            requests, self._stop_requests = self._stop_requests, []
        for key, reason in requests:
            live = self._live.get(key)
            if live is not None and live.stop_reason is None:
                live.why = reason
                self._stop(live, live.handle.grace_seconds, reason)

    def running(self) -> list[JobHandle]:
        """Jobs supervised now (read it from the supervisor thread, or after it ended)."""
        return [live.handle for live in self._live.values()]

    # ---------------------------------------------------------------- reconcile

    def _reconcile(self, assignments: tuple[Assignment, ...]) -> None:
        for a in assignments:
            self._note_attempt(JobKey(a.job_id, a.attempt, a.rank))
        # A stop of a job stops every worker of it here, whichever worker it came with.
        stops = {(a.job_id, a.attempt): a.grace_seconds for a in assignments if a.stop}
        wanted: set[JobKey] = set()
        for a in assignments:
            key = JobKey(a.job_id, a.attempt, a.rank)
            if a.attempt < self._max_attempt[a.job_id]:
                self._say_once(
                    "fenced",
                    key,
                    f"{describe(key)}: ignored, a newer attempt of this job was already seen",
                )
                continue
            wanted.add(key)
            stop = a.stop or (a.job_id, a.attempt) in stops
            live = self._live.get(key)
            if live is not None:
                if stop and live.stop_reason is None:
                    grace = a.grace_seconds if a.stop else stops[(a.job_id, a.attempt)]
                    self._stop(live, grace, "the server asked to stop it")
            elif key in self._finished:
                pass  # ended here; its report is sent or on its way
            elif stop:
                self._final_report(key, None, NEVER_STARTED)
            elif a.state in (JobState.STARTING, JobState.RUNNING, JobState.STOPPING):
                self._final_report(key, None, NO_RECORD)
                self._say(f"{describe(key)}: {NO_RECORD}")
            elif a.state is not JobState.BOUND:
                self._say_once(
                    "state",
                    key,
                    f"{describe(key)}: unexpected assignment in state {a.state}; ignored",
                )
            elif any(k.job_id == a.job_id and k.attempt != a.attempt for k in self._live):
                pass  # an older attempt is still ending here: start once it is gone
            elif any(k.job_id in a.after for k in self._live):
                pass  # jobs it preempted still hold its GPUs here: start once they are gone
            else:
                self._start(a)
        for key, live in list(self._live.items()):
            if key not in wanted and live.stop_reason is None:
                self._say(
                    f"WARNING: {_job(live.handle)} is running here but the server no "
                    "longer wants it: stopping it"
                )
                self._stop(live, live.handle.grace_seconds, "the server no longer wants it")

    def _start(self, a: Assignment) -> None:
        key = JobKey(a.job_id, a.attempt, a.rank)
        self._report(key, "starting")
        try:
            account = self.usermap.resolve(a)
            handle = self.runtime.start(a, account)
        except (AccountError, StartError) as exc:
            self._failed(key, a, str(exc))
            return
        except Exception as exc:  # a bug here must fail this job, not the agent
            log.exception("starting %s failed", describe(key))
            self._failed(key, a, f"internal error in the agent: {exc!r}")
            return
        self._live[key] = _Live(handle)
        self._publish_sessions()
        self.logs.add(key, handle.job_dir)
        self._report(key, "running", pid=handle.pid)
        gpus = ",".join(map(str, a.gpu_ids)) or "none"
        note = f"; {handle.note}" if handle.note else ""
        self._say(
            f"{_job(handle)}: started, {_where(handle)}, GPUs {gpus}, as {account.name}{note}"
        )

    def _failed(self, key: JobKey, a: Assignment, message: str) -> None:
        self._finished[key] = self._wall()
        self._report(key, "failed", message=message)
        self._say(f"{_job_of(a)}: failed to start: {message}")

    def _stop(self, live: _Live, grace_seconds: float, reason: str) -> None:
        live.stop_reason = reason
        self.runtime.stop(live.handle, grace_seconds)
        self._say(
            f"{_job(live.handle)}: stopping ({reason}): SIGTERM, then SIGKILL after "
            f"{grace_seconds:g} s"
        )

    # ---------------------------------------------------------------- exits

    def _poll(self) -> None:
        for key, live in list(self._live.items()):
            try:
                result = self.runtime.poll(live.handle)
            except Exception:
                log.exception("polling %s failed", describe(key))
                continue
            if result is not None:
                del self._live[key]
                self._publish_sessions()
                self._ended(live.handle, result, live.why)

    def _ended(self, handle: JobHandle, result: JobExit, why: str | None = None) -> None:
        key = handle.key
        self._finished[key] = self._wall()
        code = "unknown" if result.exit_code is None else str(result.exit_code)
        note = f" ({result.message})" if result.message else ""
        self._say(f"{_job(handle)}: exited with code {code}{note}")
        message = "; ".join(m for m in (why, result.message) if m) or None
        report = _report(key, "exited", exit_code=result.exit_code, message=message)
        directory = handle.job_dir

        def flushed() -> None:  # on the log thread, once the last output is shipped
            self.reports.put(report, on_ack=lambda: jobdirs.mark_reported(directory))

        self.logs.finish(key, directory, then=flushed)

    def _final_report(self, key: JobKey, exit_code: int | None, message: str) -> None:
        self._finished[key] = self._wall()
        self._report(key, "exited", exit_code=exit_code, message=message)

    def _report(self, key: JobKey, state: str, **fields: object) -> None:
        self.reports.put(_report(key, state, **fields))

    # ---------------------------------------------------------------- bookkeeping

    def _note_attempt(self, key: JobKey) -> None:
        self._max_attempt[key.job_id] = max(key.attempt, self._max_attempt.get(key.job_id, 0))

    def _say_once(self, kind: str, key: JobKey, message: str) -> None:
        if (kind, key) not in self._said:
            self._said.add((kind, key))
            self._say(message)

    def _report_strays(self) -> None:
        """Say which containers are labelled for this node but are no job it supervises
        (its job directory was lost, or another agent started them): reported, never
        removed, since the agent cannot know whether someone still needs them."""
        strays = getattr(self.runtime, "strays", None)
        for line in strays() if callable(strays) else []:
            self._say(
                f"WARNING: container {line} is labelled as a Corral job of this node, but "
                "no job here has it; it is left alone (docker rm -f it if nobody needs it)"
            )

    def _prune(self) -> None:
        if self._next_prune:  # not at start-up: recover() has just said this
            self._report_strays()
        now = self._wall()
        jobdirs.prune_reported(
            self.state_dir, older_than_seconds=FINISHED_RETENTION_SECONDS, now=now
        )
        old = [k for k, at in self._finished.items() if now - at > FINISHED_RETENTION_SECONDS]
        for key in old:
            del self._finished[key]
        self._said = {s for s in self._said if s[1] not in old}
        self._next_prune = self._clock() + PRUNE_INTERVAL_SECONDS


def _report(key: JobKey, state: str, **fields: object) -> JobReport:
    message = fields.pop("message", None)
    if isinstance(message, str) and len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return JobReport.model_validate(
        {
            "job_id": key.job_id,
            "attempt": key.attempt,
            "rank": key.rank,
            "state": state,
            "message": message,
            "at": datetime.now(UTC),
            **fields,
        }
    )


def _where(handle: JobHandle) -> str:
    """``"pid 123"``, ``"container 3f2a9c1d7e6b, pid 123"``, or ``"pid unknown yet"``."""
    pid = f"pid {handle.pid}" if handle.pid is not None else "pid unknown yet"
    return pid if handle.container is None else f"container {handle.container[:12]}, {pid}"


def _job(handle: JobHandle) -> str:
    return _label(handle.job_id, handle.name, handle.attempt, handle.rank, handle.world_size)


def _job_of(a: Assignment) -> str:
    return _label(a.job_id, a.name, a.attempt, a.rank, a.world_size)


def _label(job_id: int, name: str, attempt: int, rank: int, world_size: int) -> str:
    """``"job 7 (train) attempt 2"``; a gang's worker adds its rank: ``"... rank 1 of 4"``."""
    text = f"job {job_id} ({name}) attempt {attempt}"
    return text if world_size <= 1 and rank == 0 else f"{text} rank {rank} of {world_size}"
