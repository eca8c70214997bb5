"""Per-job cgroups for the process runtime: CPU and memory limits, OOM kills, clean-up.

`detect` finds how this machine's cgroups are laid out, once, at agent start:

- **cgroup v2** (the unified hierarchy) when its root offers the ``memory`` or ``cpu``
  controller (``cgroup.controllers``); the agent enables them below it
  (``cgroup.subtree_control`` of each level down to the agent's directory).
- **cgroup v1** otherwise, when a ``memory`` or ``cpu`` hierarchy is mounted (found in
  ``/proc/self/mountinfo``); each worker gets a directory in every such hierarchy, and
  in the ``cpuacct`` one for CPU accounting.
- **none** when the agent is not root, no such controller is mounted writable, or
  cgroups were turned off: jobs then run without limits, and the agent says so.

Each worker's cgroup is ``<hierarchy>/corral/<agent>/<job dir name>``, where ``<agent>``
is the node name and a digest of the agent's state directory (`agent_group`): two agents
on one machine (``corral up`` beside a cluster's agent, or two test runs) never share a
cgroup, even with the same node name and job ids.

Limits: memory with swap off (v1 ``memory.limit_in_bytes`` and
``memory.memsw.limit_in_bytes``; v2 ``memory.max`` and ``memory.swap.max = 0``); CPU as
a CFS quota per 100 ms period (v1 ``cpu.cfs_quota_us``; v2 ``cpu.max``). The kernel's
OOM kills are counted per cgroup (v1 ``memory.oom_control``, v2 ``memory.events``:
``oom_kill``), which is how an exit by SIGKILL is told apart as an out-of-memory kill.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.core.quantities import format_bytes

PARENT = "corral"
CPU_PERIOD_US = 100_000  # the CFS period: a job with 0.5 CPUs may run 50 ms of every 100
_MIN_QUOTA_US = 1_000  # the kernel refuses smaller quotas
LIMITED = ("memory", "cpu")  # the controllers that enforce something
_V1_CONTROLLERS = frozenset({"memory", "cpu", "cpuacct"})  # cpuacct: accounting only
_UNLIMITED_V1 = 1 << 62  # v1 reports "no limit" as a page-rounded LONG_MAX
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class CgroupError(Exception):
    """A cgroup could not be made, limited or joined; ``str(exc)`` says which and why."""


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: where, and the controllers it has (v2: those its
    root offers)."""

    mount: Path
    controllers: frozenset[str]


@dataclass(frozen=True)
class Cgroups:
    """How this node puts jobs in cgroups: ``version`` 1 or 2, or None for not at all
    (``reason`` then says why)."""

    version: int | None
    hierarchies: tuple[Hierarchy, ...] = ()
    reason: str | None = None
    parent: str = PARENT

    @property
    def enforced(self) -> tuple[str, ...]:
        """The limiting controllers in use (``memory``, ``cpu``), in that order."""
        have = {c for h in self.hierarchies for c in h.controllers}
        return tuple(c for c in LIMITED if c in have) if self.version else ()

    def describe(self) -> str:
        """One line for the agent's start-up output."""
        if self.version is None:
            return (
                f"process job limits: none ({self.reason}); their CPU and memory limits "
                "are not enforced"
            )
        return f"process job limits: cgroup v{self.version} ({', '.join(self.enforced)})"

    def limits_note(self, cpus: float | None, memory_bytes: int | None) -> str | None:
        """How a job's limits (``cpus`` in cores, ``memory_bytes``) are applied, in a few
        words for the agent's log; None when the job asked for none."""
        asked = {"cpu": None if cpus is None else f"{cpus:g} CPUs"}
        asked["memory"] = None if memory_bytes is None else f"memory {format_bytes(memory_bytes)}"
        applied = [text for c, text in asked.items() if text and c in self.enforced]
        ignored = [text for c, text in asked.items() if text and c not in self.enforced]
        parts = []
        if applied:
            parts.append(f"limits: {', '.join(applied)} (cgroup v{self.version})")
        if ignored:
            why = self.reason if self.version is None else "no such controller"
            parts.append(f"limits not enforced: {', '.join(ignored)} ({why})")
        return "; ".join(parts) or None

    def create(
        self, group: str, name: str, *, cpus: float | None, memory_bytes: int | None
    ) -> JobCgroup:
        """Make the cgroup ``<parent>/<group>/<name>`` in each hierarchy (replacing a
        leftover one of that name) with the given limits: ``cpus`` in cores,
        ``memory_bytes`` in bytes, None for no limit. Raises `CgroupError`."""
        if self.version is None:
            raise CgroupError(f"cgroups are not in use ({self.reason})")
        for part in (group, name):
            if not _SAFE_NAME.fullmatch(part):
                raise CgroupError(f"{part!r} cannot name a cgroup")
        made: list[Path] = []
        try:
            for h in self.hierarchies:
                parent = self._parent_dir(h, group)
                path = parent / name
                if path.exists() and not JobCgroup((path,)).remove():
                    raise CgroupError(f"{path} is left over from an earlier run and still busy")
                _mkdir(path)
                made.append(path)
                _set_limits(path, h.controllers, self.version, cpus, memory_bytes)
        except CgroupError:
            JobCgroup(tuple(made)).remove(wait_seconds=0)
            raise
        return JobCgroup(tuple(made))

    def _parent_dir(self, h: Hierarchy, group: str) -> Path:
        path = h.mount
        for part in (self.parent, group):
            if self.version == 2:
                # The no-internal-processes rule: controllers are handed down level by
                # level, and only leaves (the jobs' cgroups) hold processes.
                enable = " ".join(f"+{c}" for c in LIMITED if c in h.controllers)
                _write(path / "cgroup.subtree_control", enable)
            path = path / part
            if not path.is_dir():
                _mkdir(path)
        if self.version == 2:
            enable = " ".join(f"+{c}" for c in LIMITED if c in h.controllers)
            _write(path / "cgroup.subtree_control", enable)
        return path


def agent_group(node: str, state_dir: Path) -> str:
    """The directory of one agent's job cgroups: ``gpu-1-3f2a9c1e`` for node ``gpu-1``."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    return f"{node}-{digest}"


def disabled(reason: str) -> Cgroups:
    """Cgroups not in use, for ``reason`` (e.g. ``"turned off with --no-cgroups"``)."""
    return Cgroups(version=None, reason=reason)


def detect(
    *,
    mountinfo: Path = Path("/proc/self/mountinfo"),
    mounts: Path = Path("/proc/mounts"),
    euid: int | None = None,
    parent: str = PARENT,
) -> Cgroups:
    """How jobs can be put in cgroups here: v2 when its root offers ``memory`` or
    ``cpu``, else v1 when one of those is mounted, else not at all (and why).
    ``mountinfo`` is read, or ``mounts`` where it cannot be; ``euid`` defaults to ours."""
    if (os.geteuid() if euid is None else euid) != 0:
        return disabled("not root")
    entries = _mount_entries(mountinfo, mounts)
    if entries is None:
        return disabled(f"cannot read {mountinfo} or {mounts}")
    v1: dict[frozenset[str], Hierarchy] = {}
    v2: list[Hierarchy] = []
    for mount, fstype, options in entries:
        if not os.access(mount, os.W_OK):  # read-only, as in many containers
            continue
        if fstype == "cgroup2":
            offered = _read(mount / "cgroup.controllers")
            controllers = frozenset(offered.split()) & frozenset(LIMITED) if offered else None
            if controllers:
                v2.append(Hierarchy(mount, controllers))
        elif fstype == "cgroup":
            controllers = frozenset(options) & _V1_CONTROLLERS
            if controllers and controllers not in v1:  # the first mount of each wins
                v1[controllers] = Hierarchy(mount, controllers)
    if v2:
        return Cgroups(version=2, hierarchies=(v2[0],), parent=parent)
    if any(c in h.controllers for h in v1.values() for c in LIMITED):
        return Cgroups(version=1, hierarchies=tuple(v1.values()), parent=parent)
    return disabled("no writable cgroup memory or cpu controller is mounted")


@dataclass(frozen=True)
class JobCgroup:
    """One worker's cgroup: its directory in each hierarchy (one for v2). What each
    directory is for is told by the files in it, so a restarted agent needs nothing
    but the list (kept in the job's meta.json)."""

    dirs: tuple[Path, ...]

    @classmethod
    def adopt(cls, dirs: Sequence[str], name: str) -> JobCgroup | None:
        """The cgroup of a re-adopted job; None unless each directory is named ``name``
        (the job's own, so a damaged record never points at a shared cgroup)."""
        paths = tuple(Path(d) for d in dirs)
        if not paths or any(not p.is_absolute() or p.name != name for p in paths):
            return None
        return cls(paths)

    def join(self, pid: int) -> None:
        """Move process ``pid`` (and, from then on, everything it starts) into it."""
        for d in self.dirs:
            _write(d / "cgroup.procs", str(pid))

    def pids(self) -> set[int]:
        """The processes in it now."""
        return {pid for d in self.dirs for pid in _pids(d)}

    def oom_kills(self) -> int:
        """How many of its processes the kernel killed for running out of memory (0 when
        this kernel does not count them: v1 before Linux 4.13)."""
        for d in self.dirs:
            for file in ("memory.events", "memory.oom_control"):  # v2, v1
                text = _read(d / file)
                if text is not None:
                    return _keyed(text).get("oom_kill", 0)
        return 0

    def memory_limit(self) -> int | None:
        """Its memory limit in bytes; None when it has none."""
        for d in self.dirs:
            v2 = _read(d / "memory.max")
            if v2 is not None:
                return None if v2.strip() == "max" else int(v2)
            v1 = _read(d / "memory.limit_in_bytes")
            if v1 is not None:
                return None if int(v1) >= _UNLIMITED_V1 else int(v1)
        return None

    def cpu_seconds(self) -> float | None:
        """CPU time its processes used so far, in seconds; None when not accounted."""
        for d in self.dirs:
            usage_ns = _read(d / "cpuacct.usage")  # v1
            if usage_ns is not None:
                return int(usage_ns) / 1e9
            stat = _read(d / "cpu.stat")
            if stat is not None and "usage_usec" in stat:  # v2 (v1's cpu.stat has none)
                return _keyed(stat)["usage_usec"] / 1e6
        return None

    def remove(self, wait_seconds: float = 1.0) -> bool:
        """SIGKILL whatever still runs in it, then delete it, and its agent's directory
        when that is now empty. Waits up to ``wait_seconds`` for those processes to be
        gone; False when some still are (call again later), True once it is gone."""
        for d in self.dirs:
            if (d / "cgroup.kill").exists():  # v2 since Linux 5.14: the kernel does it
                with contextlib.suppress(CgroupError):
                    _write(d / "cgroup.kill", "1")
            for pid in _pids(d):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + wait_seconds
        while True:
            left = [d for d in self.dirs if not _rmdir(d)]
            if not left:
                for d in self.dirs:
                    _rmdir(d.parent)  # fails, harmlessly, while it has other jobs
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


# ------------------------------------------------------------------ helpers


def _set_limits(
    path: Path, controllers: frozenset[str], version: int, cpus: float | None, memory: int | None
) -> None:
    quota = None if cpus is None else max(_MIN_QUOTA_US, round(cpus * CPU_PERIOD_US))
    if version == 2:
        if memory is not None and "memory" in controllers:
            _write(path / "memory.max", str(memory))
            if (path / "memory.swap.max").exists():  # absent without swap accounting
                _write(path / "memory.swap.max", "0")
        if quota is not None and "cpu" in controllers:
            _write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        return
    if memory is not None and "memory" in controllers:
        _write(path / "memory.limit_in_bytes", str(memory))
        # memory + swap: the same, so the job cannot spill over into swap. Absent when
        # the kernel does not account swap (swapaccount=0).
        if (path / "memory.memsw.limit_in_bytes").exists():
            _write(path / "memory.memsw.limit_in_bytes", str(memory))
    if quota is not None and "cpu" in controllers:
        _write(path / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(path / "cpu.cfs_quota_us", str(quota))


def _mount_entries(mountinfo: Path, mounts: Path) -> list[tuple[Path, str, list[str]]] | None:
    """(mount point, file system type, options) of every mount."""
    text = _read(mountinfo)
    if text is not None:
        entries = []
        for line in text.splitlines():
            # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
            before, sep, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if sep and len(fields) >= 5 and len(tail) >= 3:
                options = fields[5].split(",") + tail[2].split(",")
                entries.append((Path(_unescape(fields[4])), tail[0], options))
        return entries
    text = _read(mounts)
    if text is None:
        return None
    # SOURCE MOUNTPOINT FSTYPE OPTIONS DUMP PASS
    return [
        (Path(_unescape(f[1])), f[2], f[3].split(","))
        for f in (line.split() for line in text.splitlines())
        if len(f) >= 4
    ]


def _unescape(field: str) -> str:
    """Mount points have spaces, tabs, newlines and backslashes as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _keyed(text: str) -> dict[str, int]:
    """``"oom_kill 3\\nunder_oom 0"`` → ``{"oom_kill": 3, "under_oom": 0}``."""
    pairs = (line.split() for line in text.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}


def _pids(d: Path) -> list[int]:
    return [int(x) for x in (_read(d / "cgroup.procs") or "").split() if x.isdigit()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write(path: Path, value: str) -> None:
    # One write() per value: cgroup files take each write as one command.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    except OSError as exc:
        raise CgroupError(f"cannot open {path}: {exc.strerror}") from None
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise CgroupError(f"cannot create {path}: {exc.strerror}") from None


def _rmdir(path: Path) -> bool:
    """True once ``path`` is gone (a cgroup directory goes only once it is empty)."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
