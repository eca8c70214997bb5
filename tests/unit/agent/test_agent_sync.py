"""Desired state generations and the report queue."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import httpx
from agent_testkit import assignment, wait_for

from corral.agent.retry import Backoff, ConnectionStatus
from corral.agent.sync import DesiredState, ReportQueue, Syncer
from corral.client import ApiClient
from corral.core.schemas import JobReport, SyncRequest, SyncResponse


def response(generation: int, *job_ids: int) -> SyncResponse:
    return SyncResponse(
        generation=generation,
        assignments=[assignment(j) for j in job_ids],
        server_time=datetime.now(UTC),
    )


def test_older_generations_never_replace_newer_ones() -> None:
    changes: list[int] = []
    desired = DesiredState(on_change=lambda: changes.append(1))
    assert desired.snapshot() is None
    assert desired.offer(response(5, 1, 2))
    assert not desired.offer(response(4))  # a late answer from before a partition
    snapshot = desired.snapshot()
    assert snapshot is not None
    assert snapshot[0] == 5 and [a.job_id for a in snapshot[1]] == [1, 2]
    assert desired.offer(response(5, 1, 2))  # the same generation again is fine
    assert desired.offer(response(6))
    assert desired.snapshot() == (6, ())
    assert len(changes) == 3


def test_first_answer_is_applied_whatever_its_generation() -> None:
    desired = DesiredState()
    assert desired.offer(response(0))
    assert desired.snapshot() == (0, ())


def report(job_id: int) -> JobReport:
    return JobReport(job_id=job_id, attempt=1, state="running", pid=42)


def test_reports_stay_queued_until_acknowledged() -> None:
    queue = ReportQueue()
    acked: list[int] = []
    queue.put(report(1), on_ack=lambda: acked.append(1))
    queue.put(report(2))
    batch = queue.take()
    assert [q.report.job_id for q in batch] == [1, 2]
    assert len(queue) == 2 and queue.take() == batch  # a failed send loses nothing
    queue.put(report(3))
    queue.acked(batch)
    assert acked == [1]
    assert [q.report.job_id for q in queue.take()] == [3]
    assert queue.wait(0)
    queue.acked(queue.take())
    assert not queue.wait(0.01)


def test_backoff_doubles_to_its_maximum() -> None:
    backoff = Backoff(initial=0.5, maximum=5)
    delays = [backoff.delay() for _ in range(6)]
    for got, nominal in zip(delays, [0.5, 1, 2, 4, 5, 5], strict=True):
        assert nominal * 0.9 <= got <= nominal
    backoff.reset()
    assert backoff.delay() <= 0.5


def test_connection_status_speaks_once_per_change() -> None:
    said: list[str] = []
    status = ConnectionStatus(said.append)
    status.ok()  # the first success is not news
    status.lost("refused")
    status.lost("refused")
    status.ok()
    status.ok()
    assert said == ["server unreachable, retrying… (refused)", "connected"]


def test_a_server_that_knows_no_notices_still_gets_the_state_changes() -> None:
    """An older server refuses a sync with a ``notice`` report in it (422, whole batch):
    the reporter drops the notices and sends the state changes again."""
    got: list[list[str]] = []

    def old_server(request: httpx.Request) -> httpx.Response:
        body = SyncRequest.model_validate_json(request.content)
        states = [r.state for r in body.reports]
        got.append(states)
        if "notice" in states:
            error = {"code": "invalid", "message": "reports.1.state: Input should be ..."}
            return httpx.Response(422, json={"error": error})
        return httpx.Response(200, content=response(1).model_dump_json())

    queue = ReportQueue()
    said: list[str] = []
    syncer = Syncer(
        ApiClient("http://corral.test", transport=httpx.MockTransport(old_server)),
        DesiredState(),
        queue,
        ConnectionStatus(said.append),
        wait_seconds=1,
        say=said.append,
        on_fatal=said.append,
    )
    exited = JobReport(job_id=1, attempt=1, state="exited", exit_code=143)
    queue.put(JobReport(job_id=1, attempt=1, state="notice", message="over its share"))
    queue.put(exited)
    stop = threading.Event()
    thread = threading.Thread(target=syncer.report, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: len(queue) == 0, "the queue to drain")
    finally:
        stop.set()
        thread.join(5)
    assert got == [["notice", "exited"], ["exited"]]
    assert said[0].startswith("the server refused 1 job notice(s)")
