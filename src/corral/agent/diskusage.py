"""Who fills the disks: bytes and files per Unix user under configured paths, like ``duc``.

`DiskUsageScanner` walks each path (``/home``, ``/scratch``, ...) in a daemon thread of
its own and publishes one `UserDiskUsage` per path and user when a pass completes; the
agent ships `latest` with its metrics. A pass

- counts the space actually allocated (``st_blocks * 512``: sparse files count what they
  hold, small files a whole block), directories' own blocks included; ``files`` counts
  everything that is not a directory (regular files, symlinks, sockets, ...);
- never follows a symlink (it counts the link itself) and never leaves the filesystem
  of the path it started in (a mount point below it is skipped);
- counts a file with several hard links once, for the owner of the inode;
- skips directories it cannot read, and counts them (`ScanStats.skipped_dirs`).

Staying out of the way: the scanning thread lowers its own CPU priority to nice 19 and
its own I/O priority to the idle class, and it works in bounded steps: after every
``chunk`` entries it sleeps for as long as needed to stay under ``busy_fraction`` of the
time (wall clock, so that waiting on a slow disk counts as work too), on the stop Event,
so `stop` ends it within one directory entry.

Per-thread priorities: on Linux both are properties of a thread (a task), not of the
process. ``setpriority(PRIO_PROCESS, tid, 19)`` with the thread's native id renices that
thread only (NPTL departs from POSIX here, see setpriority(2) NOTES), and
``ioprio_set(IOPRIO_WHO_PROCESS, tid, IDLE)`` sets the I/O priority of that one thread
(ioprio_set(2): "who is a process ID or thread ID identifying a single process or
thread"; threads share an I/O context only when created with CLONE_IO, which pthreads
do not use). psutil offers ``ionice`` only on a ``Process``, so the system call is made
through ctypes (numbers for x86-64, arm64, riscv64, ppc64 and s390x; elsewhere the
thread keeps its I/O priority and says so in the log). The I/O classes are honoured by
the BFQ and mq-deadline schedulers; with ``none`` (the default for NVMe) and on network
filesystems they change nothing, which is why the pacing above is the real guard.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import pwd
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from corral.core.telemetry import UserDiskUsage

log = logging.getLogger(__name__)

NICE = 19
IOPRIO_CLASS_IDLE = 3
IOPRIO_CLASS_BE = 2
IOPRIO_CLASS_SHIFT = 13
IOPRIO_WHO_PROCESS = 1
# (ioprio_set, ioprio_get) by machine
_IOPRIO_SYSCALLS = {
    "x86_64": (251, 252),
    "amd64": (251, 252),
    "aarch64": (30, 31),
    "arm64": (30, 31),
    "riscv64": (30, 31),
    "ppc64le": (273, 274),
    "ppc64": (273, 274),
    "s390x": (282, 283),
}
MAX_USER = 64


def ioprio_value(io_class: int, level: int = 0) -> int:
    return (io_class << IOPRIO_CLASS_SHIFT) | level


def set_thread_ioprio(tid: int, io_class: int, level: int = 0) -> None:
    """Set the I/O priority of one thread (``tid``: its native id; 0: the caller).
    Raises OSError if the kernel refuses, NotImplementedError on an unknown machine."""
    numbers = _IOPRIO_SYSCALLS.get(platform.machine().lower())
    if numbers is None:
        raise NotImplementedError(f"ioprio_set: unknown system call on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(numbers[0], IOPRIO_WHO_PROCESS, tid, ioprio_value(io_class, level)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def get_thread_ioprio(tid: int) -> tuple[int, int]:
    """``(class, level)`` of one thread's I/O priority (class 0: none set, which follows
    the CPU nice value)."""
    numbers = _IOPRIO_SYSCALLS.get(platform.machine().lower())
    if numbers is None:
        raise NotImplementedError(f"ioprio_get: unknown system call on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    value = int(libc.syscall(numbers[1], IOPRIO_WHO_PROCESS, tid))
    if value < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return value >> IOPRIO_CLASS_SHIFT, value & ((1 << IOPRIO_CLASS_SHIFT) - 1)


@dataclass
class ScanStats:
    """How the last pass over one path went (for the log and for tests; not sent)."""

    path: str
    entries: int = 0
    skipped_dirs: int = 0
    seconds: float = 0.0
    error: str | None = None  # the path itself could not be scanned


class _Stopped(Exception):
    pass


@dataclass
class _Pass:
    path: str
    device: int
    usage: dict[int, list[int]] = field(default_factory=dict)  # uid -> [bytes, files]
    linked: set[int] = field(default_factory=set)  # inodes with several links, seen
    stats: ScanStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = ScanStats(self.path)

    def add(self, st: os.stat_result, *, is_file: bool) -> None:
        counts = self.usage.get(st.st_uid)
        if counts is None:
            counts = self.usage[st.st_uid] = [0, 0]
        counts[0] += st.st_blocks * 512
        counts[1] += is_file


class DiskUsageScanner:
    """Per-user disk usage of ``paths``, rescanned every ``period`` seconds (counted
    from the end of a pass). ``chunk``/``busy_fraction``: the pacing (see the module
    docstring); ``uid_name``: uid → user name (default: the passwd database, the number
    when unknown)."""

    def __init__(
        self,
        paths: Iterable[str],
        *,
        period: float = 3600.0,
        chunk: int = 1000,
        busy_fraction: float = 0.25,
        min_pause: float = 0.001,
        uid_name: Callable[[int], str] | None = None,
        lower_priority: bool = True,
    ) -> None:
        if not 0 < busy_fraction <= 1:
            raise ValueError("busy_fraction must be in (0, 1]")
        self.paths = list(paths)
        self.period = period
        self.chunk = max(1, chunk)
        self.busy_fraction = busy_fraction
        self.min_pause = min_pause
        self.lower_priority = lower_priority
        self._uid_name = uid_name or _passwd_name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._latest: list[UserDiskUsage] = []
        self._stats: list[ScanStats] = []
        self._passes = 0
        self._count = 0
        self._chunk_started = time.monotonic()
        self.native_id: int | None = None  # of the scanning thread, once it runs

    # ------------------------------------------------------------------ public

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="corral-diskusage", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the scanning thread; True when it has ended within ``timeout`` s."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def latest(self) -> list[UserDiskUsage]:
        """The usage from the last completed pass (empty before the first one)."""
        with self._lock:
            return list(self._latest)

    def stats(self) -> list[ScanStats]:
        with self._lock:
            return list(self._stats)

    @property
    def passes(self) -> int:
        """How many passes have completed."""
        return self._passes

    def scan_once(self) -> list[UserDiskUsage]:
        """One pass over every path now, in the calling thread (paced the same way),
        published and returned; a pass cut short by `stop` publishes nothing. Not while
        the scanning thread runs (they would share the pacing)."""
        with contextlib.suppress(_Stopped):
            self._scan_all()
        return self.latest()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        self.native_id = threading.get_native_id()
        if self.lower_priority:
            lower_thread_priority(self.native_id)
        while not self._stop.is_set():
            try:
                self._scan_all()
            except _Stopped:
                return
            except Exception:  # a bug must not end monitoring for good
                log.exception("disk usage scan failed")
            self._stop.wait(self.period)

    def _scan_all(self) -> None:
        rows: list[UserDiskUsage] = []
        stats: list[ScanStats] = []
        for path in self.paths:
            started = time.monotonic()
            result = self._scan_path(path)
            result.stats.seconds = time.monotonic() - started
            stats.append(result.stats)
            if result.stats.error is not None:
                log.warning("disk usage: cannot scan %s: %s", path, result.stats.error)
                continue
            if result.stats.skipped_dirs:
                log.info(
                    "disk usage: %s: %d unreadable directories skipped",
                    path,
                    result.stats.skipped_dirs,
                )
            at = datetime.now(UTC)
            for uid, (used, files) in sorted(result.usage.items()):
                rows.append(
                    UserDiskUsage(
                        path=path, user=self._user(uid), used_bytes=used, files=files, scanned_at=at
                    )
                )
        with self._lock:
            self._latest = rows
            self._stats = stats
            self._passes += 1

    def _scan_path(self, path: str) -> _Pass:
        try:
            root = Path(path).stat()  # the configured path itself may be a symlink (/home)
        except OSError as exc:
            result = _Pass(path, -1)
            result.stats.error = exc.strerror or str(exc)
            return result
        result = _Pass(path, root.st_dev)
        self._count, self._chunk_started = 0, time.monotonic()
        if not stat.S_ISDIR(root.st_mode):
            result.stats.error = "not a directory"
            return result
        result.add(root, is_file=False)
        stack = [path]
        while stack:
            directory = stack.pop()
            try:
                entries = os.scandir(directory)
            except FileNotFoundError:
                continue  # removed since it was listed
            except OSError:
                result.stats.skipped_dirs += 1
                continue
            with entries:
                try:
                    for entry in entries:
                        self._tick()
                        self._visit(entry, result, stack)
                except OSError:  # reading the directory failed half-way (EIO, ESTALE)
                    result.stats.skipped_dirs += 1
        return result

    def _visit(self, entry: os.DirEntry[str], result: _Pass, stack: list[str]) -> None:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return  # gone since listed
        result.stats.entries += 1
        if st.st_dev != result.device:
            return  # another filesystem is mounted here
        if stat.S_ISDIR(st.st_mode):
            result.add(st, is_file=False)
            stack.append(entry.path)
            return
        if st.st_nlink > 1:
            if st.st_ino in result.linked:
                return
            result.linked.add(st.st_ino)
        result.add(st, is_file=True)

    def _tick(self) -> None:
        """Called before every entry: stop when asked, pause after every chunk."""
        if self._stop.is_set():
            raise _Stopped
        self._count += 1
        if self._count < self.chunk:
            return
        self._count = 0
        worked = time.monotonic() - self._chunk_started
        pause = max(self.min_pause, worked * (1 / self.busy_fraction - 1))
        if self._stop.wait(pause):
            raise _Stopped
        self._chunk_started = time.monotonic()

    def _user(self, uid: int) -> str:
        return self._uid_name(uid)[:MAX_USER]


def lower_thread_priority(tid: int) -> None:
    """Nice 19 and the idle I/O class for one thread (native id ``tid``) only."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, NICE)
    except OSError as exc:
        log.warning("disk usage: cannot lower the scanner's CPU priority: %s", exc)
    try:
        set_thread_ioprio(tid, IOPRIO_CLASS_IDLE)
    except OSError:
        with contextlib.suppress(OSError):  # the idle class may be refused; lowest BE then
            set_thread_ioprio(tid, IOPRIO_CLASS_BE, 7)
    except NotImplementedError as exc:
        log.info("disk usage: the scanner keeps the agent's I/O priority (%s)", exc)


def _passwd_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
