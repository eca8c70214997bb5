"""Talking to the server: the desired state it sends and the reports the agent owes it.

Two threads share one `ApiClient`:

- the watcher long-polls ``POST /agent/sync`` with no reports (this is also the node's
  heartbeat) and applies each answer, the full desired state of this node;
- the reporter sends queued `JobReport`s at once (``wait_seconds=0``), batching whatever
  has queued up, and keeps each report queued until a sync that carried it succeeded
  (the server handles duplicates idempotently).

An answer is applied only if its generation is at least the highest seen, so a late
answer from before a network partition cannot undo newer state. An unreachable server
(for instance killed and restarted) is retried with backoff; running jobs are untouched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from corral.agent.retry import Backoff, ConnectionStatus
from corral.client import ApiClient
from corral.core.errors import (
    CorralError,
    InvalidRequest,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from corral.core.schemas import Assignment, JobReport, SyncRequest, SyncResponse

MAX_REPORTS_PER_SYNC = 500  # keeps one sync well under the server's 1 MiB body limit
MAX_WAIT_SECONDS = 60.0  # SyncRequest.wait_seconds allows no more
_HTTP_SLACK_SECONDS = 15.0  # on top of a long poll's wait, before the request times out
_MIN_POLL_INTERVAL_SECONDS = 0.2  # against a server that answers long polls at once

NODE_REFUSED = (
    "the server no longer accepts this node's token (was the node removed?): start the "
    "agent with a new --join-token"
)


class DesiredState:
    """The newest desired state received; thread-safe. ``on_change`` runs after each
    applied answer (it wakes the supervisor)."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._on_change = on_change
        self._generation = 0
        self._assignments: tuple[Assignment, ...] | None = None

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    def offer(self, response: SyncResponse) -> bool:
        """Apply ``response`` unless it is older than what was already applied."""
        with self._lock:
            if self._assignments is not None and response.generation < self._generation:
                return False
            self._generation = response.generation
            self._assignments = tuple(response.assignments)
        self._on_change()
        return True

    def snapshot(self) -> tuple[int, tuple[Assignment, ...]] | None:
        """(generation, assignments), or None before the first answer."""
        with self._lock:
            if self._assignments is None:
                return None
            return self._generation, self._assignments


@dataclass(eq=False)
class QueuedReport:
    report: JobReport
    on_ack: Callable[[], None] | None = None


class ReportQueue:
    """Reports waiting for a successful sync; thread-safe, in the order they were made."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[QueuedReport] = []
        self._holds = 0

    def put(self, report: JobReport, on_ack: Callable[[], None] | None = None) -> None:
        """Queue ``report``; ``on_ack`` runs once the server has acknowledged it."""
        with self._cond:
            self._items.append(QueuedReport(report, on_ack))
            self._cond.notify_all()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep what is put meanwhile from being sent until the block ends, so the
        reports of one supervisor pass (a job's "starting" and "running", several jobs
        started together) go to the server in one sync."""
        with self._cond:
            self._holds += 1
        try:
            yield
        finally:
            with self._cond:
                self._holds -= 1
                self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for something to send (and not held back);
        True if there is."""
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._items) and not self._holds, timeout)

    def take(self, limit: int = MAX_REPORTS_PER_SYNC) -> list[QueuedReport]:
        """The oldest ``limit`` reports, left in the queue until `acked`."""
        with self._cond:
            return self._items[:limit]

    def acked(self, sent: list[QueuedReport]) -> None:
        """Drop ``sent`` from the queue and run their acknowledgement callbacks."""
        done = {id(q) for q in sent}
        with self._cond:
            self._items = [q for q in self._items if id(q) not in done]
        for q in sent:
            if q.on_ack is not None:
                q.on_ack()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class Syncer:
    """The watcher and reporter thread bodies (see the module docstring).

    ``wait_seconds`` is the long-poll wait the server asked for (clamped to 0.5 to 60 s);
    ``on_fatal`` is called with one line when the server refuses this node for good.
    """

    def __init__(
        self,
        client: ApiClient,
        desired: DesiredState,
        reports: ReportQueue,
        status: ConnectionStatus,
        *,
        wait_seconds: float,
        say: Callable[[str], None],
        on_fatal: Callable[[str], None],
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.client = client
        self.desired = desired
        self.reports = reports
        self.status = status
        self.wait_seconds = min(max(wait_seconds, 0.5), MAX_WAIT_SECONDS)
        self._say = say
        self._on_fatal = on_fatal
        self._new_backoff = backoff
        self._last_error: dict[str, str] = {}  # per activity: said once until it changes

    def sync(self, reports: list[JobReport], wait_seconds: float) -> SyncResponse:
        """One ``POST /agent/sync``. Raises `CorralError`s (`Unavailable` included)."""
        body = SyncRequest(
            generation_seen=self.desired.generation, reports=reports, wait_seconds=wait_seconds
        )
        return self.client.exchange(
            "POST", "/agent/sync", body, SyncResponse, timeout=wait_seconds + _HTTP_SLACK_SECONDS
        )

    def watch(self, stop: threading.Event) -> None:
        """Watcher thread body: long-poll until ``stop`` is set."""
        backoff = self._new_backoff()
        while not stop.is_set():
            began = time.monotonic()
            try:
                response = self.sync([], self.wait_seconds)
            except CorralError as exc:
                if not self._handle(exc, "watching for work"):
                    return
                stop.wait(backoff.delay())
                continue
            self._succeeded("watching for work", backoff)
            newer = response.generation > self.desired.generation
            self.desired.offer(response)
            if not newer and time.monotonic() - began < _MIN_POLL_INTERVAL_SECONDS:
                stop.wait(_MIN_POLL_INTERVAL_SECONDS)

    def report(self, stop: threading.Event) -> None:
        """Reporter thread body: send queued reports until ``stop`` is set."""
        backoff = self._new_backoff()
        while not stop.is_set():
            if not self.reports.wait(timeout=0.2):
                continue
            batch = self.reports.take()
            try:
                response = self.sync([q.report for q in batch], 0.0)
            except (InvalidRequest, PayloadTooLarge) as exc:
                notices = [q for q in batch if q.report.state == "notice"]
                if notices and len(notices) < len(batch):
                    # A server older than notices refuses them, and with them the state
                    # changes they came with: drop the notices, send the rest again.
                    self._say(f"the server refused {len(notices)} job notice(s) ({exc}); dropped")
                    self.reports.acked(notices)
                    continue
                # Retrying cannot help a batch the server will never take; holding it
                # would block every later report.
                self._say(f"the server refused {len(batch)} job report(s) ({exc}); dropped")
                self.reports.acked(batch)
                continue
            except CorralError as exc:
                if not self._handle(exc, "sending job reports"):
                    return
                stop.wait(backoff.delay())
                continue
            self._succeeded("sending job reports", backoff)
            self.reports.acked(batch)
            self.desired.offer(response)

    def _handle(self, exc: CorralError, doing: str) -> bool:
        """Say what went wrong; False when the agent must give up."""
        if isinstance(exc, Unauthorized):
            self._on_fatal(NODE_REFUSED)
            return False
        if isinstance(exc, Unavailable):
            self.status.lost(str(exc))
        elif self._last_error.get(doing) != str(exc):
            self._last_error[doing] = str(exc)
            self._say(f"server error while {doing} ({exc}); retrying")
        return True

    def _succeeded(self, doing: str, backoff: Backoff) -> None:
        backoff.reset()
        self._last_error.pop(doing, None)
        self.status.ok()
