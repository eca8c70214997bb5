"""One `Runtime` in front of the node's runtimes: host processes, and Docker when the
node has an engine.

An assignment with a container spec goes to the Docker runtime, every other one to the
process runtime; a job directory is adopted by the runtime its ``meta.json`` names;
``poll`` and ``stop`` go to the runtime that holds the worker.
"""

from __future__ import annotations

from pathlib import Path

from corral.agent import jobdirs
from corral.agent.jobdirs import JobKey
from corral.agent.runtime.base import JobExit, JobHandle, Runtime, StartError
from corral.agent.runtime.docker import DockerRuntime
from corral.agent.usermap import JobAccount
from corral.core.schemas import Assignment

NO_ENGINE = (
    "this node has no container engine (Docker) the agent can reach, so it cannot run "
    "a container job"
)


class Runtimes:
    """Routes to ``process`` and, when given, ``docker``."""

    name = "process+docker"

    def __init__(self, process: Runtime, docker: DockerRuntime | None = None) -> None:
        self.process = process
        self.docker = docker
        self._owner: dict[JobKey, Runtime] = {}

    def start(self, assignment: Assignment, account: JobAccount) -> JobHandle:
        runtime: Runtime
        if assignment.container is not None:
            if self.docker is None:
                raise StartError(NO_ENGINE)
            runtime = self.docker
        else:
            runtime = self.process
        handle = runtime.start(assignment, account)
        self._owner[handle.key] = runtime
        return handle

    def adopt(self, job_dir: Path) -> JobHandle | None:
        meta = jobdirs.read_meta(job_dir)
        if meta is None:
            return None
        runtime: Runtime | None = self.docker if meta.runtime == "docker" else self.process
        if runtime is None:
            return None  # a container job, and no engine now: see `unadoptable`
        handle = runtime.adopt(job_dir)
        if handle is not None:
            self._owner[handle.key] = runtime
        return handle

    def poll(self, handle: JobHandle) -> JobExit | None:
        runtime = self._owner.get(handle.key)
        if runtime is None:
            raise KeyError(f"job {handle.key} is not supervised by this runtime")
        result = runtime.poll(handle)
        if result is not None:
            del self._owner[handle.key]
        return result

    def stop(self, handle: JobHandle, grace_seconds: float) -> None:
        runtime = self._owner.get(handle.key)
        if runtime is not None:
            runtime.stop(handle, grace_seconds)

    def running(self) -> list[JobHandle]:
        handles = self.process.running()
        if self.docker is not None:
            handles += self.docker.running()
        return handles

    def containers(self) -> dict[str, tuple[int, int]]:
        """Container id -> (job id, rank) of the container workers supervised here."""
        return self.docker.containers() if self.docker is not None else {}

    def close(self) -> None:
        """The agent is stopping: let go of the engine's log streams (jobs run on)."""
        if self.docker is not None:
            self.docker.close()

    def strays(self) -> list[str]:
        """Containers labelled for this node that no supervised job is (see
        `DockerRuntime.strays`)."""
        return self.docker.strays() if self.docker is not None else []
