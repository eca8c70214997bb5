"""Whose is a GPU process? NVML names only pids; this fills in the rest of `GpuProcess`.

In order:

1. **job**: the process, its session, or one of its ancestors (or their sessions) is a
   running Corral job worker: ``jobs`` maps each worker's session id, which is its shim's
   pid (`corral.agent.runtime.process`), to ``(job_id, rank)``. Ancestors count because
   a job may start a launcher that calls ``setsid``. A container of a Corral job (the
   Docker runtime) is named in ``job_containers`` (container id → ``(job_id, rank)``);
   labels are never trusted for this, since anyone who can start a container sets them.
2. **container**: its cgroup (``/proc/<pid>/cgroup``; cgroup v1 and v2 forms such as
   ``/docker/<id>``, ``/system.slice/docker-<id>.scope``, ``cri-containerd-<id>.scope``,
   ``libpod-<id>.scope``, ``/kubepods/.../<id>``) names a container. ``container`` is
   its name when a resolver knows it (`DockerResolver`: the Docker Engine API over its
   unix socket), else the short id; ``user`` is the ``corral.user`` label, else what
   the name pattern captures (default: ``<user>_<anything>``, the convention of labs
   whose users run everything in their own containers), else None.
3. **user**: any other process, with its Unix user (real uid; numeric if unknown).
4. **unknown**: it ended, or ``/proc/<pid>`` cannot be read.

``command`` is the short command: the base name of the first word of ``argv[0]`` (not
``comm``, which PyTorch renames ``pt_main_thread``), or ``comm`` when there is no argv
(a zombie). What does not change in a process's life (cgroup, uid, command, ancestors)
is cached per ``(pid, start time)``, so a pid reused by another process is read afresh.

Pids are those of the agent's pid namespace: an agent in a container without the host's
pid namespace sees none of the host's GPU processes as its own (they come out unknown).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx

from corral.agent.hostmetrics import parse_stat, read_small
from corral.core.telemetry import GpuProcess, Owner

log = logging.getLogger(__name__)

JobMap = Mapping[int, tuple[int, int]]  # session id (shim pid) -> (job_id, rank)
ContainerInfo = tuple[str, Mapping[str, str]]  # (name, labels)
ContainerResolver = Callable[[str], ContainerInfo | None]

DEFAULT_USER_PATTERN = r"^(?P<user>[a-z_][a-z0-9_-]*?)_"
USER_LABEL = "corral.user"
MAX_COMMAND = 256
MAX_USER = 64
MAX_ANCESTORS = 64
_CACHE_MAX_AGE = 600.0  # seconds an entry lives on after its pid was last asked about

# A 64-hex container id ending a cgroup path component, after "/" or a "<prefix>-" of a
# scope ("docker-", "cri-containerd-", "crio-", "libpod-"), before ".scope", "/" or the
# end of the path.
_CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?=/|$)")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Attribution:
    owner: Owner
    job_id: int | None = None
    rank: int | None = None
    container: str | None = None
    user: str | None = None
    command: str | None = None


class _Facts(NamedTuple):
    """What is cached about one process (pid and start time)."""

    session: int
    chain: tuple[tuple[int, int], ...]  # (pid, session) of its ancestors, parent first
    container_id: str | None
    uid: int | None
    command: str | None


def container_id_from_cgroup(text: str) -> str | None:
    """The container id a ``/proc/<pid>/cgroup`` file names, if any (the last one in a
    path, so a container nested in another is found as itself)."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        found = _CONTAINER_ID.findall(path)
        if found:
            return str(found[-1])
    return None


class Attributor:
    """Attributes processes of this host. ``proc_root``, ``resolver`` (container id →
    ``(name, labels)`` or None), ``user_pattern`` (a regex with a ``user`` group, matched
    at the start of a container's name; None: no pattern), ``uid_name`` and ``clock``
    are injectable. ``resolver`` defaults to `DockerResolver` (None when Docker is not
    there)."""

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        resolver: ContainerResolver | None = None,
        user_pattern: str | re.Pattern[str] | None = DEFAULT_USER_PATTERN,
        user_label: str = USER_LABEL,
        uid_name: Callable[[int], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._proc = proc_root
        self._resolver = resolver if resolver is not None else DockerResolver()
        self._pattern = re.compile(user_pattern) if isinstance(user_pattern, str) else user_pattern
        if self._pattern is not None and "user" not in self._pattern.groupindex:
            raise ValueError("the container name pattern needs a (?P<user>...) group")
        self._label = user_label
        self._uid_name = uid_name if uid_name is not None else _UidNames(clock).name
        self._clock = clock
        self._cache: dict[tuple[int, int], tuple[_Facts, float]] = {}
        self._pruned_at = clock()

    def attribute(
        self,
        processes: Iterable[GpuProcess],
        jobs: JobMap,
        job_containers: Mapping[str, tuple[int, int]] | None = None,
    ) -> list[GpuProcess]:
        """Copies of ``processes`` with owner, job, container, user and command set."""
        out = []
        for process in processes:
            found = self.attribute_pid(process.pid, jobs, job_containers)
            out.append(
                process.model_copy(
                    update={
                        "owner": found.owner,
                        "job_id": found.job_id,
                        "rank": found.rank,
                        "container": found.container,
                        "user": found.user,
                        "command": found.command,
                    }
                )
            )
        self._prune()
        return out

    def attribute_pid(
        self,
        pid: int,
        jobs: JobMap,
        job_containers: Mapping[str, tuple[int, int]] | None = None,
    ) -> Attribution:
        facts = self._facts(pid)
        if facts is None:
            return Attribution("unknown")
        unix_user = self._uid_name(facts.uid) if facts.uid is not None else None
        for member, session in ((pid, facts.session), *facts.chain):
            job = jobs.get(session) or jobs.get(member)
            if job is not None:
                return Attribution(
                    "job", job_id=job[0], rank=job[1], user=unix_user, command=facts.command
                )
        cid = facts.container_id
        if cid is not None:
            job = (job_containers or {}).get(cid)
            if job is not None:
                return Attribution("job", job_id=job[0], rank=job[1], command=facts.command)
            info = self._resolve(cid)
            name = info[0].lstrip("/")[:256] if info is not None and info[0] else cid[:12]
            labels = info[1] if info is not None else {}
            return Attribution(
                "container",
                container=name,
                user=self._container_user(name, labels),
                command=facts.command,
            )
        return Attribution("user", user=unix_user, command=facts.command)

    def close(self) -> None:
        """Release the resolver's connection (if it has one)."""
        close = getattr(self._resolver, "close", None)
        if callable(close):
            close()

    # ------------------------------------------------------------------ helpers

    def _container_user(self, name: str, labels: Mapping[str, str]) -> str | None:
        label = labels.get(self._label)
        if label:
            return label[:MAX_USER]
        if self._pattern is not None:
            match = self._pattern.match(name)
            if match and match["user"]:
                return str(match["user"])[:MAX_USER]
        return None

    def _resolve(self, container_id: str) -> ContainerInfo | None:
        try:
            return self._resolver(container_id)
        except Exception:  # a broken resolver must not stop the sample
            log.debug("container %s: resolver failed", container_id[:12], exc_info=True)
            return None

    def _facts(self, pid: int) -> _Facts | None:
        data = read_small(f"{self._proc}/{pid}/stat")
        stat = parse_stat(data) if data is not None else None
        if stat is None:
            return None
        now = self._clock()
        cached = self._cache.get((pid, stat.start))
        if cached is not None:
            self._cache[(pid, stat.start)] = (cached[0], now)
            return cached[0]
        base = f"{self._proc}/{pid}"
        cgroup = read_small(f"{base}/cgroup")
        facts = _Facts(
            session=stat.session,
            chain=self._ancestors(stat.ppid),
            container_id=container_id_from_cgroup(cgroup.decode(errors="replace"))
            if cgroup
            else None,
            uid=_real_uid(read_small(f"{base}/status")),
            command=_command(read_small(f"{base}/cmdline"), read_small(f"{base}/comm")),
        )
        if read_small(f"{base}/stat") is None:  # ended while we looked: the rest may be empty
            return None
        self._cache[(pid, stat.start)] = (facts, now)
        return facts

    def _ancestors(self, ppid: int) -> tuple[tuple[int, int], ...]:
        chain: list[tuple[int, int]] = []
        seen: set[int] = set()
        while ppid > 1 and ppid not in seen and len(chain) < MAX_ANCESTORS:
            seen.add(ppid)
            data = read_small(f"{self._proc}/{ppid}/stat")
            stat = parse_stat(data) if data is not None else None
            if stat is None:
                break
            chain.append((ppid, stat.session))
            ppid = stat.ppid
        return tuple(chain)

    def _prune(self) -> None:
        now = self._clock()
        if now - self._pruned_at < 60:
            return
        self._pruned_at = now
        for key, (_, used) in list(self._cache.items()):
            if now - used > _CACHE_MAX_AGE:
                del self._cache[key]


def _real_uid(status: bytes | None) -> int | None:
    for line in (status or b"").splitlines():
        if line.startswith(b"Uid:"):
            parts = line.split()
            with contextlib.suppress(IndexError, ValueError):
                return int(parts[1])
    return None


def _command(cmdline: bytes | None, comm: bytes | None) -> str | None:
    argv0 = (cmdline or b"").split(b"\0", 1)[0].strip()
    if argv0:
        word = argv0.split()[0].rstrip(b"/")
        name = os.path.basename(word) or word  # noqa: PTH119 (bytes, not a path of ours)
        return name.decode(errors="replace")[:MAX_COMMAND]
    if comm and comm.strip():
        return comm.strip().decode(errors="replace")[:MAX_COMMAND]
    return None


class _UidNames:
    """uid → user name through the passwd database (which may be LDAP: slow), cached;
    the number itself for a uid it does not know."""

    def __init__(self, clock: Callable[[], float], ttl: float = 600.0) -> None:
        self._clock = clock
        self._ttl = ttl
        self._names: dict[int, tuple[str, float]] = {}

    def name(self, uid: int) -> str:
        now = self._clock()
        known = self._names.get(uid)
        if known is not None and now - known[1] < self._ttl:
            return known[0]
        try:
            name = pwd.getpwuid(uid).pw_name[:MAX_USER]
        except KeyError:
            name = str(uid)
        self._names[uid] = (name, now)
        return name


class DockerResolver:
    """Container id → ``(name, labels)`` from the Docker Engine API (``GET
    /containers/<id>/json`` over its unix socket), or None: no Docker here (no socket),
    no such container (not Docker's: containerd, Podman), or no answer within
    ``timeout`` seconds. Answers are cached for ``ttl`` seconds and failures for
    ``negative_ttl``, so a host without Docker costs one ``stat`` a minute.

    ``socket_path``: default ``$DOCKER_HOST`` when it is ``unix://...``, else
    ``/var/run/docker.sock``.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        timeout: float = 0.5,
        ttl: float = 300.0,
        negative_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if socket_path is None:
            host = os.environ.get("DOCKER_HOST", "")
            socket_path = host.removeprefix("unix://") if host.startswith("unix://") else None
        self.socket_path = socket_path or "/var/run/docker.sock"
        self._timeout = timeout
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._cache: dict[str, tuple[ContainerInfo | None, float]] = {}
        self._client: httpx.Client | None = None

    def __call__(self, container_id: str) -> ContainerInfo | None:
        if not _HEX64.fullmatch(container_id):
            return None
        now = self._clock()
        cached = self._cache.get(container_id)
        if cached is not None:
            info, at = cached
            if now - at < (self._ttl if info is not None else self._negative_ttl):
                return info
        info = self._inspect(container_id)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[container_id] = (info, now)
        return info

    def _inspect(self, container_id: str) -> ContainerInfo | None:
        if not os.path.exists(self.socket_path):  # noqa: PTH110 (a socket, cheap check)
            return None
        if self._client is None:
            self._client = httpx.Client(
                transport=httpx.HTTPTransport(uds=self.socket_path),
                base_url="http://docker",
                timeout=self._timeout,
            )
        try:
            response = self._client.get(f"/containers/{container_id}/json")
            if response.status_code != 200:
                return None
            body: Any = response.json()
        except (httpx.HTTPError, ValueError, OSError) as exc:
            log.debug("docker: cannot inspect container %s: %s", container_id[:12], exc)
            return None
        if not isinstance(body, dict):
            return None
        name = body.get("Name")
        config = body.get("Config")
        labels = config.get("Labels") if isinstance(config, dict) else None
        return (
            name.lstrip("/") if isinstance(name, str) else "",
            {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
