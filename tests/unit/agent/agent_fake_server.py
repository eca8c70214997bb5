"""A small in-process Corral server for the agent's tests (``httpx.MockTransport``).

It speaks the agent protocol of `corral.core.schemas` the way the real server does:
register with a join token (or the node's own token), long-polled ``/agent/sync``
answering at once when it has a newer generation or when reports came, and log PUTs
(one log per job, attempt and worker rank) that store only bytes at or past what they
hold. Tests change the desired state with
`set_assignments`, switch the server off with ``down``, and read back everything the
agent sent.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any

import httpx

from corral.client import ApiClient
from corral.core.schemas import Assignment, JobReport, NodeInventory, SyncRequest
from corral.core.states import JobState

_LOG_PATH = re.compile(r"/api/v1/agent/jobs/(\d+)/attempts/(\d+)/log")

Key = tuple[int, int, int]  # job_id, attempt, rank


def _error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


class FakeServer:
    def __init__(
        self,
        *,
        join_token: str = "join-secret",
        node_token: str = "node-secret",
        sync_wait_seconds: float = 5.0,
    ) -> None:
        self.join_token = join_token
        self.node_token = node_token
        self.sync_wait_seconds = sync_wait_seconds
        self.cond = threading.Condition()
        self.generation = 0
        self.assignments: dict[Key, Assignment] = {}
        self.registrations: list[NodeInventory] = []
        self.reports: list[JobReport] = []
        self.logs: dict[Key, bytearray] = {}
        self.log_puts: list[tuple[Key, int, int]] = []  # key, offset, length
        self.sync_tokens: list[str] = []
        self.stale_answers: list[dict[str, Any]] = []
        self.stale_delivered = threading.Event()
        self.down = False
        self.closed = False

    # ----------------------------------------------------------- test controls

    def client(self) -> ApiClient:
        return ApiClient("http://corral.test", transport=httpx.MockTransport(self.handle))

    def set_assignments(self, *assignments: Assignment, generation: int | None = None) -> None:
        """Replace the desired state and bump the generation (or set it)."""
        with self.cond:
            self.assignments = {(a.job_id, a.attempt, a.rank): a for a in assignments}
            self.generation = generation if generation is not None else self.generation + 1
            self.cond.notify_all()

    def send_stale(self, generation: int, *assignments: Assignment) -> None:
        """Make the next sync answer an old desired state, as a late reply would."""
        with self.cond:
            self.stale_answers.append(self._answer(generation, list(assignments)))
            self.cond.notify_all()

    def set_down(self, down: bool) -> None:
        with self.cond:
            self.down = down
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def reports_for(self, job_id: int, attempt: int = 1, rank: int = 0) -> list[JobReport]:
        with self.cond:
            return [
                r for r in self.reports if (r.job_id, r.attempt, r.rank) == (job_id, attempt, rank)
            ]

    def final_report(self, job_id: int, attempt: int = 1, rank: int = 0) -> JobReport | None:
        finals = [
            r for r in self.reports_for(job_id, attempt, rank) if r.state in ("exited", "failed")
        ]
        return finals[0] if finals else None

    def log_of(self, job_id: int, attempt: int = 1, rank: int = 0) -> bytes:
        with self.cond:
            return bytes(self.logs.get((job_id, attempt, rank), b""))

    # ----------------------------------------------------------- the protocol

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if path == "/api/v1/agent/register":
            if token not in (self.join_token, self.node_token):
                return _error(401, "unauthorized", "unknown token")
            inventory = NodeInventory.model_validate_json(request.content)
            with self.cond:
                self.registrations.append(inventory)
            return httpx.Response(
                200,
                json={
                    "node": inventory.name,
                    "node_token": self.node_token,
                    "sync_wait_seconds": self.sync_wait_seconds,
                },
            )
        if token != self.node_token:
            return _error(401, "unauthorized", "unknown node token")
        if path == "/api/v1/agent/sync":
            return self._sync(SyncRequest.model_validate_json(request.content), token)
        match = _LOG_PATH.fullmatch(path)
        if match and request.method == "PUT":
            rank = int(request.url.params.get("rank", "0"))
            key = (int(match.group(1)), int(match.group(2)), rank)
            return self._log(key, int(request.url.params["offset"]), request.content)
        return _error(404, "not_found", f"no route {request.method} {path}")

    def _sync(self, body: SyncRequest, token: str) -> httpx.Response:
        with self.cond:
            self.sync_tokens.append(token)
            for report in body.reports:
                self._apply(report)
            if not body.reports and not self.stale_answers:
                self.cond.wait_for(
                    lambda: (
                        self.generation > body.generation_seen
                        or bool(self.stale_answers)
                        or self.closed
                        or self.down
                    ),
                    timeout=body.wait_seconds,
                )
            if self.down:
                raise httpx.ReadError("connection reset by peer")
            if self.stale_answers:
                self.stale_delivered.set()
                return httpx.Response(200, json=self.stale_answers.pop(0))
            return httpx.Response(
                200, json=self._answer(self.generation, list(self.assignments.values()))
            )

    def _apply(self, report: JobReport) -> None:
        # Like the real server: a final report takes the job out of the desired state.
        self.reports.append(report)
        key = (report.job_id, report.attempt, report.rank)
        current = self.assignments.get(key)
        if current is None:
            return
        if report.state in ("exited", "failed"):
            del self.assignments[key]
            self.generation += 1
        elif report.state in ("starting", "running") and not current.stop:
            self.assignments[key] = current.model_copy(update={"state": JobState(report.state)})

    def _log(self, key: Key, offset: int, chunk: bytes) -> httpx.Response:
        with self.cond:
            self.log_puts.append((key, offset, len(chunk)))
            stored = self.logs.setdefault(key, bytearray())
            if offset <= len(stored) < offset + len(chunk):
                stored.extend(chunk[len(stored) - offset :])
            return httpx.Response(200, json={"next_offset": len(stored)})

    def _answer(self, generation: int, assignments: list[Assignment]) -> dict[str, Any]:
        return {
            "generation": generation,
            "assignments": [a.model_dump(mode="json") for a in assignments],
            "server_time": datetime.now(UTC).isoformat(),
        }
