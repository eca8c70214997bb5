"""Jobs as Docker containers, through the node's Docker engine (the Docker SDK for Python).

A worker of a container job (an assignment with a `ContainerSpec`) becomes one
container, named ``corral-<node>-<job>-<attempt>`` (``-r<rank>`` for a gang's other
workers) and labelled ``corral.job`` (the job id), ``corral.job-name``,
``corral.attempt``, ``corral.rank``, ``corral.project``, ``corral.user`` and
``corral.node``. It runs:

- as the job's Unix account (``uid:gid`` and its other groups) with
  ``no-new-privileges``, unless the job asked for the image's own user (``--root``) and
  the server allowed it;
- with the job's CPU (``nano_cpus``) and memory limits (``mem_limit``, and as much
  swap+memory, so no swap), its shared memory size, its mounts (bind mounts the server
  resolved from the admin's volumes), its working directory, and the job's environment
  (`corral.agent.runtime.env`) without the host's ``PATH`` and ``SHELL``, which are the
  image's business;
- with its GPUs as a device request by UUID (``driver="nvidia"``, what ``docker run
  --gpus device=UUID`` sends) and ``NVIDIA_VISIBLE_DEVICES``; on a node whose GPUs are
  simulated there is no NVIDIA runtime, so no device request is made (``gpu_requests``
  chooses);
- with the host's network (a gang's ``MASTER_ADDR``/``MASTER_PORT`` and a job's ports
  work as for host processes) and Docker's init (tini) as PID 1, so SIGTERM reaches the
  command as it would outside a container (a shell as PID 1 ignores it);
- for a job on part of a shared GPU where the node runs MPS (`corral.agent.mps`): the
  MPS variables, the daemon's pipe directory mounted, and the host's IPC namespace.

The agent copies the container's output from the engine (``docker logs --follow``) into
``output.log`` in the job directory, from where it is shipped like a process job's. After
an agent restart the copy resumes after the bytes already in ``output.log`` (the
engine's log of the container is replayed from its start and that many bytes skipped),
so nothing is lost or doubled.

Stop is SIGTERM to the container, then SIGKILL once the grace period has passed, both
sent by the agent (``docker kill``), so the supervisor never waits. When the container
has ended, its exit code and whether the kernel killed it for memory (``OOMKilled``)
are reported, then the container is removed. Containers keep running when the agent
stops; the next agent re-adopts each one from its job directory (``meta.json`` names the
container), checking the container's labels. Containers labelled for this node that no
job directory names are listed by `DockerRuntime.strays` and reported, never removed.

When the image is not on the node yet it is pulled in the background (the worker shows
as running without a pid meanwhile); a pull that fails ends the worker with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from corral.agent import jobdirs
from corral.agent.jobdirs import JobKey, JobMeta
from corral.agent.mps import MpsSettings
from corral.agent.runtime.base import JobExit, JobHandle, StartError
from corral.agent.runtime.env import job_environment
from corral.agent.usermap import JobAccount
from corral.core.quantities import format_bytes
from corral.core.schemas import Assignment

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

LABEL_JOB = "corral.job"
LABEL_JOB_NAME = "corral.job-name"
LABEL_ATTEMPT = "corral.attempt"
LABEL_RANK = "corral.rank"
LABEL_PROJECT = "corral.project"
LABEL_USER = "corral.user"
LABEL_NODE = "corral.node"

GpuRequests = Literal["auto", "always", "never"]
"""When a container gets a GPU device request: ``auto`` when the node's GPUs are real."""

# Variables of the job's environment that describe the host, not the image.
_HOST_ONLY_ENV = ("PATH", "SHELL")
_OOM_EXIT = 137  # 128 + SIGKILL: what the kernel's OOM kill of the init leaves


def container_name(node: str, key: JobKey) -> str:
    """``corral-<node>-<job>-<attempt>``, ``-r<rank>`` added for ranks 1 and up."""
    return f"corral-{node}-{jobdirs.dir_name(key)}"


def connect(base_url: str | None = None, *, timeout: float = 10.0) -> tuple[Any, str]:
    """A Docker client and the engine's description (``"docker 20.10.24"``).

    ``base_url`` None: ``$DOCKER_HOST``, else the default socket. Raises `StartError`
    saying why when the engine cannot be reached.
    """
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - a dependency of corral
        raise StartError(f"the Python package docker is missing: {exc}") from None
    where = base_url or _default_docker_host()
    if where.startswith("unix://") and not Path(where.removeprefix("unix://")).exists():
        raise StartError(f"no Docker engine at {where}: no such socket")
    try:
        if base_url is None:
            client = docker.from_env(timeout=int(timeout))
        else:
            client = docker.DockerClient(base_url=base_url, timeout=int(timeout))
        version = client.version()
    except Exception as exc:
        raise StartError(f"no Docker engine answers at {where}: {_api_message(exc)}") from None
    return client, f"docker {version.get('Version', '?')}"


def _default_docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def container_config(
    assignment: Assignment,
    account: JobAccount,
    *,
    node_name: str,
    gpus_simulated: bool,
    agent_env: Mapping[str, str],
    gpu_requests: GpuRequests = "auto",
    mps: MpsSettings | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``docker.containers.create`` for ``assignment``.

    A pure function of its inputs, so what a container gets is testable without an
    engine. Raises `StartError` when the assignment is not a container job.
    """
    spec = assignment.container
    if spec is None:
        raise StartError("not a container job (no image)")
    from docker.types import DeviceRequest, Mount

    key = JobKey(assignment.job_id, assignment.attempt, assignment.rank)
    env = job_environment(
        assignment,
        account,
        node_name=node_name,
        gpus_simulated=gpus_simulated,
        agent_env=agent_env,
        mps=mps,
    )
    for name in _HOST_ONLY_ENV:
        env.pop(name, None)
    config: dict[str, Any] = {
        "image": spec.image,
        "command": list(assignment.command) or None,
        "name": container_name(node_name, key),
        "labels": {
            LABEL_JOB: str(assignment.job_id),
            LABEL_JOB_NAME: assignment.name,
            LABEL_ATTEMPT: str(assignment.attempt),
            LABEL_RANK: str(assignment.rank),
            LABEL_PROJECT: assignment.project,
            LABEL_USER: assignment.user,
            LABEL_NODE: node_name,
        },
        "environment": env,
        "network_mode": "host",
        "init": True,
        "detach": True,
        "stdin_open": False,
        "tty": False,
        "mounts": [
            Mount(target=m.target, source=m.source, type="bind", read_only=m.read_only)
            for m in spec.mounts
        ],
    }
    mps_pipe = env.get("CUDA_MPS_PIPE_DIRECTORY")
    if mps_pipe is not None:
        # An MPS client reaches its control daemon through the pipe directory and
        # shares memory with the server over the host's IPC namespace.
        config["mounts"].append(Mount(target=mps_pipe, source=mps_pipe, type="bind"))
        config["ipc_mode"] = "host"
    if not spec.run_as_root:
        config["user"] = f"{account.uid}:{account.gid}"
        others = [str(g) for g in account.groups if g != account.gid]
        if others:
            config["group_add"] = others
        # A setuid binary in the image must not turn the job's account into root.
        config["security_opt"] = ["no-new-privileges"]
    if assignment.workdir:
        config["working_dir"] = assignment.workdir
    if assignment.memory_bytes is not None:
        config["mem_limit"] = int(assignment.memory_bytes)
        config["memswap_limit"] = int(assignment.memory_bytes)  # the same: no swap
    if assignment.cpus is not None:
        config["nano_cpus"] = round(assignment.cpus * 1e9)
    if spec.shm_size_bytes is not None:
        config["shm_size"] = int(spec.shm_size_bytes)
    wants_request = gpu_requests == "always" or (gpu_requests == "auto" and not gpus_simulated)
    if assignment.gpu_uuids and wants_request:
        config["device_requests"] = [
            DeviceRequest(
                driver="nvidia", device_ids=list(assignment.gpu_uuids), capabilities=[["gpu"]]
            )
        ]
    return config


@dataclass
class _Tracked:
    handle: JobHandle
    image: str
    memory_bytes: int | None
    container: str | None = None  # its id, once created
    preparing: threading.Thread | None = None  # pulling the image, then creating
    prepare_error: str | None = None
    pump: threading.Thread | None = None
    stop_grace: float | None = None
    kill_at: float | None = None
    term_pending: bool = False  # a stop arrived before the container started
    killed: bool = False
    notes: list[str] = field(default_factory=list)


class DockerRuntime:
    """Runs container jobs under ``state_dir/jobs`` through ``client`` (a
    ``docker.DockerClient``). ``clock``, ``agent_env`` and ``on_exit`` are as for
    `ProcessRuntime`; ``gpu_requests`` decides when a container gets a GPU device
    request (``auto``: only when the GPUs are real)."""

    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        state_dir: Path,
        *,
        node_name: str,
        gpus_simulated: bool,
        gpu_requests: GpuRequests = "auto",
        mps: MpsSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        agent_env: Mapping[str, str] | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.state_dir = state_dir
        self.node_name = node_name
        self.gpus_simulated = gpus_simulated
        self.gpu_requests: GpuRequests = gpu_requests
        self.mps = mps
        self._clock = clock
        self._agent_env = os.environ if agent_env is None else agent_env
        self._on_exit = on_exit
        self._tracked: dict[JobKey, _Tracked] = {}
        self._lock = threading.Lock()  # guards _Tracked fields the worker threads set
        self._streams: set[Any] = set()  # open log streams, closed by close()
        self._closed = False

    # ---------------------------------------------------------------- start

    def start(self, assignment: Assignment, account: JobAccount) -> JobHandle:
        """Create and start the container (in the background when its image must be
        pulled first). Raises `StartError` with the reason."""
        config = container_config(
            assignment,
            account,
            node_name=self.node_name,
            gpus_simulated=self.gpus_simulated,
            agent_env=self._agent_env,
            gpu_requests=self.gpu_requests,
            mps=self.mps,
        )
        key = JobKey(assignment.job_id, assignment.attempt, assignment.rank)
        directory = jobdirs.job_dir(self.state_dir, key)
        directory.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(directory, ignore_errors=True)  # a start that never got far
        directory.mkdir(mode=0o700)
        fd = os.open(
            directory / jobdirs.OUTPUT, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644
        )
        os.close(fd)
        self._remove_leftover(config["name"])
        started_at = datetime.now(UTC)
        handle = JobHandle(
            job_id=assignment.job_id,
            attempt=assignment.attempt,
            name=assignment.name,
            job_dir=directory,
            pid=None,
            started_at=started_at,
            grace_seconds=assignment.grace_seconds,
            rank=assignment.rank,
            world_size=assignment.world_size,
        )
        t = _Tracked(handle=handle, image=config["image"], memory_bytes=assignment.memory_bytes)
        meta = self._meta(handle, account, container=None)
        jobdirs.write_meta(directory, meta)  # adoption finds the container by its name
        if self._has_image(t.image):
            try:
                self._create_and_start(t, config)
            except StartError:
                shutil.rmtree(directory, ignore_errors=True)
                raise
            handle = t.handle
            jobdirs.write_meta(directory, self._meta(handle, account, container=t.container))
        else:
            t.notes.append(f"pulling image {t.image}")
            t.preparing = threading.Thread(
                target=self._pull_then_start,
                args=(t, config, account),
                name=f"corral-docker-{jobdirs.dir_name(key)}-pull",
                daemon=True,
            )
            t.preparing.start()
        self._tracked[key] = t
        return t.handle

    def _meta(self, handle: JobHandle, account: JobAccount, container: str | None) -> JobMeta:
        return JobMeta(
            job_id=handle.job_id,
            attempt=handle.attempt,
            name=handle.name,
            pid=handle.pid or 0,
            pgid=0,
            create_time=0.0,
            started_at=handle.started_at.isoformat(),
            user=account.name,
            uid=account.uid,
            grace_seconds=handle.grace_seconds,
            runtime=self.name,
            rank=handle.rank,
            world_size=handle.world_size,
            container=container,
        )

    def _has_image(self, image: str) -> bool:
        import docker.errors

        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError as exc:
            raise StartError(f"the Docker engine could not look up image {image}: {exc}") from None
        return True

    def _pull_then_start(self, t: _Tracked, config: dict[str, Any], account: JobAccount) -> None:
        """Thread body: pull the image, then create and start the container."""
        try:
            repository, _, tag = t.image.rpartition(":")
            if not repository or "/" in tag:  # "registry:5000/img" has no tag
                repository, tag = t.image, "latest"
            self.client.images.pull(repository, tag=tag)
            with self._lock:
                cancelled = t.stop_grace is not None
            if cancelled:
                raise StartError("stopped before its container started")
            self._create_and_start(t, config)
            jobdirs.write_meta(t.handle.job_dir, self._meta(t.handle, account, t.container))
            with self._lock:
                cancelled = t.stop_grace is not None
            if cancelled:  # stopped while it was being created: it must not run on
                self._kill(t, "SIGKILL")
                t.killed = True
        except StartError as exc:
            t.prepare_error = str(exc)
        except Exception as exc:
            t.prepare_error = f"could not pull image {t.image}: {_api_message(exc)}"
        if self._on_exit is not None:
            self._on_exit()

    def _create_and_start(self, t: _Tracked, config: dict[str, Any]) -> None:
        import docker.errors

        try:
            container = self.client.containers.create(**config)
        except docker.errors.ImageNotFound:
            raise StartError(f"image {t.image} is not on node {self.node_name}") from None
        except docker.errors.APIError as exc:
            raise StartError(
                f"Docker refused to create the container: {_api_message(exc)}"
            ) from None
        try:
            container.start()
            container.reload()
        except docker.errors.APIError as exc:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            raise StartError(f"the container did not start: {_api_message(exc)}") from None
        pid = container.attrs.get("State", {}).get("Pid") or None
        with self._lock:
            t.container = container.id
            t.handle = _with(t.handle, pid=pid, container=container.id)
        self._start_pump(t, skip=0)

    def _remove_leftover(self, name: str) -> None:
        """A container of this very worker left from a start that never recorded it."""
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            old = self.client.containers.get(name)
            if old.labels.get(LABEL_NODE) == self.node_name:
                old.remove(force=True)

    # ---------------------------------------------------------------- logs

    def _start_pump(self, t: _Tracked, skip: int) -> None:
        assert t.container is not None
        t.pump = threading.Thread(
            target=self._pump,
            args=(t.container, t.handle.job_dir / jobdirs.OUTPUT, skip),
            name=f"corral-docker-{jobdirs.dir_name(t.handle.key)}-logs",
            daemon=True,
        )
        t.pump.start()

    def _pump(self, container: str, output: Path, skip: int) -> None:
        """Thread body: append the container's output to ``output`` until it ends,
        after skipping the first ``skip`` bytes (already there)."""
        stream: Any = None
        try:
            stream = self.client.api.logs(
                container, stdout=True, stderr=True, stream=True, follow=True
            )
            with self._lock:
                self._streams.add(stream)
            fd = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            with os.fdopen(fd, "ab", buffering=0) as f:
                for chunk in stream:
                    if self._closed:
                        return
                    if skip >= len(chunk):
                        skip -= len(chunk)
                        continue
                    f.write(chunk[skip:])
                    skip = 0
        except Exception as exc:  # the engine went away: poll decides what it means
            log.debug("log stream of container %s ended: %r", container, exc)
        finally:
            with self._lock:
                self._streams.discard(stream)
        if self._on_exit is not None and not self._closed:
            self._on_exit()

    def close(self) -> None:
        """Stop copying output (the agent is stopping); the containers run on, and the
        next agent's runtime resumes the copy where this one stopped."""
        self._closed = True
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            with contextlib.suppress(Exception):
                stream.close()
        for t in list(self._tracked.values()):
            if t.pump is not None:
                t.pump.join(timeout=2)

    # ---------------------------------------------------------------- adopt

    def adopt(self, job_dir: Path) -> JobHandle | None:
        """Take over a container recorded in ``job_dir`` by an earlier agent (see
        `Runtime.adopt`): by the id in meta.json, else by its name, else by its labels;
        its labels must name the same job, attempt, rank and node."""
        meta = jobdirs.read_meta(job_dir)
        if meta is None or meta.runtime != self.name:
            return None
        if meta.key in self._tracked:
            return self._tracked[meta.key].handle
        key = meta.key
        found = (
            self._find(meta.container, key)
            or self._find(container_name(self.node_name, key), key)
            or self._find_by_labels(key)
        )
        handle = JobHandle(
            job_id=meta.job_id,
            attempt=meta.attempt,
            name=meta.name,
            job_dir=job_dir,
            pid=None,
            started_at=datetime.fromisoformat(meta.started_at),
            grace_seconds=meta.grace_seconds,
            adopted=True,
            rank=meta.rank,
            world_size=meta.world_size,
        )
        t = _Tracked(handle=handle, image="", memory_bytes=None)
        if found is None:
            t.prepare_error = (
                "its container is gone (removed while the agent was down); exit code unknown"
            )
        else:
            state = found.attrs.get("State", {})
            config = found.attrs.get("HostConfig", {})
            t.container = found.id
            t.image = found.attrs.get("Config", {}).get("Image", "")
            t.memory_bytes = config.get("Memory") or None
            t.handle = _with(handle, pid=state.get("Pid") or None, container=found.id)
            self._start_pump(t, skip=_size(job_dir / jobdirs.OUTPUT))
        self._tracked[key] = t
        return t.handle

    def _find(self, ref: str | None, key: JobKey) -> Any | None:
        import docker.errors

        if not ref:
            return None
        try:
            container = self.client.containers.get(ref)
        except docker.errors.NotFound:
            return None
        labels = container.labels
        expected = {
            LABEL_JOB: str(key.job_id),
            LABEL_ATTEMPT: str(key.attempt),
            LABEL_RANK: str(key.rank),
            LABEL_NODE: self.node_name,
        }
        if any(labels.get(k) != v for k, v in expected.items()):
            return None
        return container

    def _find_by_labels(self, key: JobKey) -> Any | None:
        """The container labelled as worker ``key`` of this node (renamed, say)."""
        labels = {
            LABEL_JOB: str(key.job_id),
            LABEL_ATTEMPT: str(key.attempt),
            LABEL_RANK: str(key.rank),
            LABEL_NODE: self.node_name,
        }
        try:
            found = self.client.containers.list(
                all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]}
            )
        except Exception:
            return None
        return found[0] if len(found) == 1 else None

    def strays(self) -> list[str]:
        """Containers labelled for this node that no supervised job is: one line each
        (name, job, state), to report. They are left alone."""
        tracked = {t.container for t in self._tracked.values() if t.container}
        try:
            found = self.client.containers.list(
                all=True, filters={"label": f"{LABEL_NODE}={self.node_name}"}
            )
        except Exception as exc:
            return [f"(could not list containers: {_api_message(exc)})"]
        lines = []
        for c in found:
            if c.id in tracked:
                continue
            labels = c.labels
            lines.append(
                f"{c.name} (job {labels.get(LABEL_JOB, '?')} attempt "
                f"{labels.get(LABEL_ATTEMPT, '?')}, user {labels.get(LABEL_USER, '?')}, "
                f"{c.status})"
            )
        return lines

    # ---------------------------------------------------------------- poll and stop

    def poll(self, handle: JobHandle) -> JobExit | None:
        """None while the container (or its image pull) is under way; else how it
        ended, once, after its output has been copied; the container is then removed."""
        t = self._tracked.get(handle.key)
        if t is None:
            raise KeyError(f"job {handle.key} is not supervised by this runtime")
        with self._lock:
            container = t.container
        if container is None:
            if t.preparing is not None and t.preparing.is_alive() and t.stop_grace is None:
                return None
            if t.prepare_error is None:  # the pull thread finished but recorded nothing
                t.prepare_error = "the container was never created"
            del self._tracked[handle.key]
            return JobExit(None, self._stop_note(t) or t.prepare_error)
        if t.term_pending:
            t.term_pending = False
            self._kill(t, "SIGTERM")
        if t.pump is not None and t.pump.is_alive():
            self._maybe_kill(t)
            return None
        state = self._state(container)
        if state is None:
            result = JobExit(None, "its container disappeared; exit code unknown")
        elif state.get("Running") or state.get("Restarting"):
            # The log stream broke off (the engine restarted?): follow it again.
            self._start_pump(t, skip=_size(t.handle.job_dir / jobdirs.OUTPUT))
            self._maybe_kill(t)
            return None
        else:
            result = self._exit_of(t, state)
            self._remove(container)
        del self._tracked[handle.key]
        return result

    def stop(self, handle: JobHandle, grace_seconds: float) -> None:
        """SIGTERM to the container now, SIGKILL after ``grace_seconds`` (sent by
        `poll`). A worker whose image is still being pulled is not started at all."""
        t = self._tracked.get(handle.key)
        if t is None:
            return
        with self._lock:
            if t.stop_grace is not None:
                return
            t.stop_grace = grace_seconds
            container = t.container
        if container is None:
            return  # the pull thread sees stop_grace and does not start it
        if grace_seconds <= 0:
            self._kill(t, "SIGKILL")
            t.killed = True
        else:
            t.kill_at = self._clock() + grace_seconds
            self._kill(t, "SIGTERM")

    def running(self) -> list[JobHandle]:
        return [t.handle for t in self._tracked.values()]

    def containers(self) -> dict[str, tuple[int, int]]:
        """Container id -> (job id, rank) of the workers supervised here."""
        return {
            t.container: (t.handle.job_id, t.handle.rank)
            for t in list(self._tracked.values())
            if t.container is not None
        }

    # ---------------------------------------------------------------- helpers

    def _maybe_kill(self, t: _Tracked) -> None:
        if t.kill_at is not None and not t.killed and self._clock() >= t.kill_at:
            self._kill(t, "SIGKILL")
            t.killed = True

    def _kill(self, t: _Tracked, sig: str) -> None:
        import docker.errors

        if t.container is None:
            return
        try:
            self.client.api.kill(t.container, signal=sig)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:  # e.g. "is not running": it ended already
            log.debug("docker kill %s %s: %s", sig, t.container, exc)

    def _state(self, container: str) -> dict[str, Any] | None:
        import docker.errors

        try:
            return dict(self.client.api.inspect_container(container).get("State", {}))
        except docker.errors.NotFound:
            return None

    def _exit_of(self, t: _Tracked, state: Mapping[str, Any]) -> JobExit:
        code = state.get("ExitCode")
        code = int(code) if isinstance(code, int) else None
        if state.get("OOMKilled"):
            limit = (
                f" (its memory limit is {format_bytes(t.memory_bytes)})" if t.memory_bytes else ""
            )
            return JobExit(
                code if code is not None else _OOM_EXIT,
                f"killed by the kernel for running out of memory{limit}",
            )
        note = self._stop_note(t)
        if note is None and state.get("Error"):
            note = f"Docker: {state['Error']}"
        return JobExit(code, note)

    def _stop_note(self, t: _Tracked) -> str | None:
        if t.stop_grace is None:
            return None
        if t.container is None:
            return "stopped before its container started"
        if t.killed:
            return f"stopped: killed with SIGKILL after the {t.stop_grace:g} s grace period"
        return "stopped with SIGTERM"

    def _remove(self, container: str) -> None:
        import docker.errors

        try:
            self.client.api.remove_container(container, force=True)
        except docker.errors.APIError as exc:
            log.warning("could not remove container %s: %s", container, exc)


def _with(handle: JobHandle, **changes: Any) -> JobHandle:
    return replace(handle, **changes)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _api_message(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)
