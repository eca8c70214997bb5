"""The on-disk record of each job attempt's worker: ``<state_dir>/jobs/<job_id>-<attempt>/``
for rank 0 (every job that is not a gang, and a gang's first worker), and
``<job_id>-<attempt>-r<rank>/`` for a gang's other workers (ranks 1 and up), so that
several workers of one gang can run on one node.

::

    output.log   stdout and stderr of the job, appended by the job itself
    started      marker: the shim has begun starting the command (see runtime/process.py)
    exit-code    the job's exit status, written by the shell shim when it ends
    meta.json    runtime, pid, process group, process start time, ids, container id,
                 cgroup directories (written by the agent)
    log-offset   bytes of output.log the server has acknowledged
    reported     marker: the server acknowledged the job's final report

This record is what lets a restarted agent find, re-adopt and report its jobs.

When jobs run as other accounts the directory belongs to the job's account (its shim must
write ``exit-code`` there), so a root agent treats it as hostile ground: it never follows
a symlink in it (a job could point ``meta.json.tmp`` at /etc/shadow), writes only through
fresh randomly named files renamed into place, and believes the files it trusts
(meta.json, reported) only when its own account owns them, so a job cannot point the
agent at someone else's processes by rewriting its meta.json.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

OUTPUT = "output.log"
EXIT_CODE = "exit-code"
STARTED = "started"
META = "meta.json"
LOG_OFFSET = "log-offset"
REPORTED = "reported"


class JobKey(NamedTuple):
    """One worker of one job attempt: what the agent supervises, ships and reports."""

    job_id: int
    attempt: int
    rank: int = 0  # which worker of a gang; 0 for every job that is not one


_DIR_NAME = re.compile(r"([0-9]+)-([0-9]+)(?:-r([0-9]+))?")


def describe(key: JobKey) -> str:
    """``"job 12 attempt 3"``, with ``" rank 1"`` for a gang's other workers."""
    text = f"job {key.job_id} attempt {key.attempt}"
    return text if key.rank == 0 else f"{text} rank {key.rank}"


def jobs_root(state_dir: Path) -> Path:
    return state_dir / "jobs"


def dir_name(key: JobKey) -> str:
    """``"12-3"`` for rank 0 (the name from before gangs), ``"12-3-r1"`` for rank 1."""
    base = f"{key.job_id}-{key.attempt}"
    return base if key.rank == 0 else f"{base}-r{key.rank}"


def job_dir(state_dir: Path, key: JobKey) -> Path:
    return jobs_root(state_dir) / dir_name(key)


def parse_key(name: str) -> JobKey | None:
    """``"12-3"`` → ``(12, 3, 0)``, ``"12-3-r1"`` → ``(12, 3, 1)``; None for anything
    else, including names `dir_name` never makes (``"12-3-r0"``, ``"012-3"``)."""
    match = _DIR_NAME.fullmatch(name)
    if match is None:
        return None
    job_id, attempt, rank = match.groups()
    key = JobKey(int(job_id), int(attempt), int(rank or 0))
    return key if dir_name(key) == name else None


@dataclass(frozen=True)
class JobMeta:
    """What the agent records when it starts a job. Times: ``create_time`` in seconds
    since the epoch as psutil reports it; ``started_at`` ISO 8601 UTC."""

    job_id: int
    attempt: int
    name: str
    pid: int
    pgid: int
    create_time: float
    started_at: str
    user: str
    uid: int
    grace_seconds: float
    runtime: str = "process"
    rank: int = 0  # absent from the meta.json of agents from before gangs: rank 0
    world_size: int = 1
    container: str | None = None  # the container's id, for the Docker runtime
    # The directories of its cgroup, one per hierarchy (process runtime with limits).
    cgroups: list[str] = field(default_factory=list)

    @property
    def key(self) -> JobKey:
        return JobKey(self.job_id, self.attempt, self.rank)


def write_meta(directory: Path, meta: JobMeta) -> None:
    write_atomic(directory / META, json.dumps(asdict(meta), indent=1) + "\n")


def read_meta(directory: Path) -> JobMeta | None:
    """The directory's meta.json, or None when missing, unreadable or not the agent's own."""
    text = read_small_file(directory / META, agent_owned=True)
    if text is None:
        return None
    try:
        return JobMeta(**json.loads(text))
    except (ValueError, TypeError):
        return None


def read_exit_code(directory: Path) -> int | None:
    """The code the shim recorded, or None when it recorded none (or garbage)."""
    text = (read_small_file(directory / EXIT_CODE, agent_owned=False) or "").strip()
    return int(text) if text.isdigit() else None


def mark_reported(directory: Path) -> None:
    """Record that the server acknowledged this attempt's final report."""
    if directory.is_dir():
        write_atomic(directory / REPORTED, "")


def is_reported(directory: Path) -> bool:
    return read_small_file(directory / REPORTED, agent_owned=True) is not None


def list_job_dirs(state_dir: Path) -> list[tuple[JobKey, Path]]:
    """Every job directory (``<job_id>-<attempt>`` and ``<job_id>-<attempt>-r<rank>``),
    in job, attempt and rank order."""
    root = jobs_root(state_dir)
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        return []
    found = [(key, p) for p in entries if p.is_dir() and (key := parse_key(p.name)) is not None]
    return sorted(found)


def prune_reported(state_dir: Path, *, older_than_seconds: float, now: float) -> list[Path]:
    """Delete reported job directories whose report was acknowledged more than
    ``older_than_seconds`` before ``now`` (seconds since the epoch). Returns them."""
    removed = []
    for _, directory in list_job_dirs(state_dir):
        if not is_reported(directory):
            continue
        try:
            acked_at = (directory / REPORTED).stat().st_mtime
        except OSError:
            continue
        if now - acked_at > older_than_seconds:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new file, never half.

    The temporary file has a random name and is created exclusively without following
    links, and the rename replaces whatever ``path`` was (a symlink included) rather than
    writing through it.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_small_file(path: Path, *, agent_owned: bool, limit: int = 65536) -> str | None:
    """The text of a regular file (not a symlink), at most ``limit`` bytes; None when it is
    missing, not a plain file, or (with ``agent_owned``) owned by another account."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (agent_owned and st.st_uid != os.geteuid()):
            return None
        return f.read(limit).decode("utf-8", "replace")
