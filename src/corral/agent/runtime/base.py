"""What a job runtime provides (process now, Docker with issue 6)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from corral.agent.jobdirs import JobKey
from corral.agent.usermap import JobAccount
from corral.core.schemas import Assignment


class StartError(Exception):
    """A job could not be started; ``str(exc)`` is the reason reported to the server."""


@dataclass(frozen=True)
class JobExit:
    """How a job ended. ``exit_code`` is its status (a death by signal N is 128+N), None
    when it cannot be known; ``message`` explains anything unusual."""

    exit_code: int | None
    message: str | None = None


@dataclass(frozen=True)
class JobHandle:
    """A job (one worker of it) a runtime started or adopted. ``pid`` is its main
    process (None when the runtime has no host process to name, as for a container not
    yet started); ``rank`` is which worker of a gang of ``world_size`` it is;
    ``container`` is the Docker container id of a container job (None: a host process);
    ``note`` is a few words for the agent's "started" line (e.g. how its limits apply)."""

    job_id: int
    attempt: int
    name: str
    job_dir: Path
    pid: int | None
    started_at: datetime
    grace_seconds: float
    adopted: bool = False
    rank: int = 0
    world_size: int = 1
    container: str | None = None
    note: str | None = None

    @property
    def key(self) -> JobKey:
        return JobKey(self.job_id, self.attempt, self.rank)


class Runtime(Protocol):
    """Starts, watches and stops jobs. All methods return at once (no waiting); the
    supervisor calls `poll` often, which is also what drives a pending SIGKILL."""

    name: str

    def start(self, assignment: Assignment, account: JobAccount) -> JobHandle:
        """Start ``assignment`` as ``account``. Raises `StartError` with the reason."""
        ...

    def poll(self, handle: JobHandle) -> JobExit | None:
        """None while the job runs; how it ended once it has (then the handle is done)."""
        ...

    def stop(self, handle: JobHandle, grace_seconds: float) -> None:
        """Ask the job to end now, and force it once ``grace_seconds`` have passed."""
        ...

    def adopt(self, job_dir: Path) -> JobHandle | None:
        """Take over a job this runtime started before an agent restart; None when the
        directory holds no job it can trust. A job that ended meanwhile is adopted too:
        its next `poll` says how it ended."""
        ...

    def running(self) -> list[JobHandle]:
        """The jobs it is supervising now."""
        ...
