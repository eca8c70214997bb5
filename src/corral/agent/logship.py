"""Shipping job output to the server.

Each job attempt's ``output.log`` (one per worker of a gang) is sent in chunks of at most
1 MiB with ``PUT /agent/jobs/{job_id}/attempts/{attempt}/log?offset=N&rank=R``, where R is
the worker's rank (0 for a job that is not a gang). The server stores only bytes
at or past what it has and answers where to continue (`LogAck.next_offset`); the agent
always continues from there and keeps that offset in the job directory, so a restarted
agent resumes without sending anything twice. A job's final flush happens before its
exit is reported, so ``corral logs`` is complete once the job is shown as ended.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.agent import jobdirs
from corral.agent.jobdirs import JobKey, describe
from corral.agent.retry import Backoff
from corral.client import ApiClient
from corral.core.errors import CorralError, PayloadTooLarge, Unavailable
from corral.core.schemas import LogAck

MAX_CHUNK_BYTES = 1024 * 1024
MIN_CHUNK_BYTES = 64 * 1024  # the smallest chunk tried when the server says "too large"
# How much of one job is sent per round, so one chatty job cannot starve the others.
MAX_BYTES_PER_ROUND = 8 * MAX_CHUNK_BYTES


class LogShipper:
    """Ships one worker's ``output.log``; remembers the acknowledged offset."""

    def __init__(self, client: ApiClient, key: JobKey, job_dir: Path) -> None:
        self.client = client
        self.key = key
        self.job_dir = job_dir
        self.chunk_bytes = MAX_CHUNK_BYTES
        text = jobdirs.read_small_file(job_dir / jobdirs.LOG_OFFSET, agent_owned=True)
        self.offset = int(text) if text and text.strip().isdigit() else 0

    @property
    def path(self) -> str:
        return f"/agent/jobs/{self.key.job_id}/attempts/{self.key.attempt}/log"

    def ship(self, max_bytes: int = MAX_BYTES_PER_ROUND) -> bool:
        """Send up to ``max_bytes`` the server lacks. True when everything written so far
        has been acknowledged. Raises `Unavailable` and other `CorralError`s."""
        f = _open_output(self.job_dir / jobdirs.OUTPUT)
        if f is None:
            return True  # no output file (yet, or any more): nothing to send
        with f:
            sent = 0
            while sent < max_bytes:
                f.seek(self.offset)
                chunk = f.read(self.chunk_bytes)
                if not chunk:
                    return True
                try:
                    answer = self.client.request(
                        "PUT",
                        self.path,
                        params={"offset": self.offset, "rank": self.key.rank},
                        content=chunk,
                    )
                except PayloadTooLarge:
                    # A server (or proxy) with a lower body limit: smaller chunks, not
                    # a lost log.
                    if self.chunk_bytes <= MIN_CHUNK_BYTES:
                        raise
                    self.chunk_bytes //= 2
                    continue
                self._acked(LogAck.model_validate(answer).next_offset)
                sent += len(chunk)
        return False

    def _acked(self, next_offset: int) -> None:
        if next_offset != self.offset:
            self.offset = max(0, next_offset)
            jobdirs.write_atomic(self.job_dir / jobdirs.LOG_OFFSET, f"{self.offset}\n")


def _open_output(path: Path) -> io.FileIO | None:
    """The output file for reading, refusing anything a job could have swapped in to
    make a root agent read someone else's file: a symlink, a non-regular file, or a
    hard link (a second name for a file that lives elsewhere)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        return None
    return io.FileIO(fd, "r")


@dataclass
class _Entry:
    shipper: LogShipper
    then: Callable[[], None] | None = None  # set by finish(): run after the final flush
    given_up: bool = False  # the server refused this log: send no more of it


class LogShipping:
    """The log-shipping thread: every ``flush_seconds`` sends new output of every job.

    `finish` asks for a job's final flush and a callback once it is done (the exit
    report). An unreachable server is retried with backoff; any other refusal ends the
    shipping of that job's log (said once) so its exit report is never held up.
    """

    def __init__(
        self,
        client: ApiClient,
        *,
        flush_seconds: float,
        say: Callable[[str], None],
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.flush_seconds = flush_seconds
        self._say = say
        self._backoff = backoff or Backoff()
        self._lock = threading.Lock()
        self._entries: dict[JobKey, _Entry] = {}
        self._wake = threading.Event()

    def add(self, key: JobKey, job_dir: Path) -> None:
        with self._lock:
            if key not in self._entries:
                self._entries[key] = _Entry(LogShipper(self.client, key, job_dir))

    def finish(self, key: JobKey, job_dir: Path, then: Callable[[], None]) -> None:
        """Flush the rest of ``key``'s output, then call ``then`` (from this thread)."""
        with self._lock:
            entry = self._entries.setdefault(key, _Entry(LogShipper(self.client, key, job_dir)))
            entry.then = then
        self.wake()

    def wake(self) -> None:
        """End the current wait early (new final flush, or shutting down)."""
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._entries)

    def run_once(self) -> bool:
        """One round over every job. False when the server was unreachable."""
        with self._lock:
            entries = list(self._entries.items())
        for key, entry in entries:
            caught_up = entry.given_up
            if not entry.given_up:
                try:
                    caught_up = entry.shipper.ship()
                except Unavailable:
                    return False
                except CorralError as exc:
                    self._say(
                        f"{describe(key)}: the server refused its output ({exc}); no more "
                        "of it will be sent"
                    )
                    entry.given_up = caught_up = True
            if caught_up and entry.then is not None:
                with self._lock:
                    del self._entries[key]
                entry.then()
        return True

    def run(self, stop: threading.Event) -> None:
        """Thread body: ship until ``stop`` is set."""
        while not stop.is_set():
            if self.run_once():
                self._backoff.reset()
                delay = self.flush_seconds
            else:
                delay = self._backoff.delay()
            self._wake.wait(delay)
            self._wake.clear()
            if stop.is_set():
                return
