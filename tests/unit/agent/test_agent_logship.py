"""Shipping job output: chunking, offsets, resuming, and the final flush."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from corral.agent import jobdirs
from corral.agent.jobdirs import JobKey
from corral.agent.logship import MAX_CHUNK_BYTES, LogShipper, LogShipping
from corral.client import ApiClient

MIB = 1024 * 1024
KEY = JobKey(1, 2)


class LogServer:
    """Stores one log the way the server does; can pretend to be behind or down."""

    def __init__(self) -> None:
        self.stored = bytearray()
        self.puts: list[tuple[str, int, int]] = []  # path, offset, length
        self.down = False
        self.refuse = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        if self.refuse:
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no job 1"}})
        offset = int(request.url.params["offset"])
        self.puts.append((request.url.path, offset, len(request.content)))
        if offset <= len(self.stored) < offset + len(request.content):
            self.stored.extend(request.content[len(self.stored) - offset :])
        return httpx.Response(200, json={"next_offset": len(self.stored)})

    def client(self) -> ApiClient:
        return ApiClient("http://corral.test", transport=httpx.MockTransport(self.handle))


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    d = tmp_path / "jobs" / "1-2"
    d.mkdir(parents=True)
    return d


def write_output(job_dir: Path, data: bytes) -> None:
    with open(job_dir / jobdirs.OUTPUT, "ab") as f:
        f.write(data)


def test_chunks_of_at_most_one_mib_with_running_offsets(job_dir: Path) -> None:
    server = LogServer()
    data = bytes(range(256)) * (10 * MIB // 256 // 4)  # 2.5 MiB
    write_output(job_dir, data)
    assert LogShipper(server.client(), KEY, job_dir).ship()
    path = "/api/v1/agent/jobs/1/attempts/2/log"
    assert server.puts == [(path, 0, MIB), (path, MIB, MIB), (path, 2 * MIB, len(data) - 2 * MIB)]
    assert bytes(server.stored) == data
    assert max(n for _, _, n in server.puts) <= MAX_CHUNK_BYTES


def test_a_restarted_agent_resumes_without_duplicates(job_dir: Path) -> None:
    server = LogServer()
    write_output(job_dir, b"first\n")
    LogShipper(server.client(), KEY, job_dir).ship()
    write_output(job_dir, b"second\n")
    again = LogShipper(server.client(), KEY, job_dir)  # the offset is read back
    assert again.offset == 6
    again.ship()
    assert [(o, n) for _, o, n in server.puts] == [(0, 6), (6, 7)]
    assert bytes(server.stored) == b"first\nsecond\n"


def test_continues_where_the_server_says(job_dir: Path) -> None:
    server = LogServer()
    write_output(job_dir, b"0123456789")
    shipper = LogShipper(server.client(), KEY, job_dir)
    shipper.ship()
    server.stored = bytearray(b"0123")  # the server lost its tail: it is behind
    write_output(job_dir, b"abc")
    shipper.ship()
    assert bytes(server.stored) == b"0123456789abc"
    server.stored.extend(b"XYZ")  # ahead (another writer, a lost offset file): skip on
    write_output(job_dir, b"def")
    shipper.ship()
    assert shipper.offset == 16
    write_output(job_dir, b"g")
    shipper.ship()
    assert bytes(server.stored) == b"0123456789abcXYZg"


def test_nothing_to_send_sends_nothing(job_dir: Path) -> None:
    server = LogServer()
    assert LogShipper(server.client(), KEY, job_dir).ship()  # no file yet
    (job_dir / jobdirs.OUTPUT).touch()
    assert LogShipper(server.client(), KEY, job_dir).ship()
    assert server.puts == []


def test_refuses_to_read_through_a_symlink(job_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root's secret\n")
    (job_dir / jobdirs.OUTPUT).symlink_to(secret)
    server = LogServer()
    assert LogShipper(server.client(), KEY, job_dir).ship()
    assert server.puts == []


def test_final_flush_then_callback_survives_an_outage(job_dir: Path) -> None:
    server = LogServer()
    said: list[str] = []
    shipping = LogShipping(server.client(), flush_seconds=0.01, say=said.append)
    write_output(job_dir, b"all of it\n")
    done = threading.Event()
    server.down = True
    shipping.finish(KEY, job_dir, then=done.set)
    assert shipping.run_once() is False
    assert not done.is_set(), "the exit must not be reported before its output"
    server.down = False
    assert shipping.run_once() is True
    assert done.is_set()
    assert bytes(server.stored) == b"all of it\n"
    assert shipping.pending() == 0


def test_a_refused_log_never_holds_up_the_exit_report(job_dir: Path) -> None:
    server = LogServer()
    said: list[str] = []
    shipping = LogShipping(server.client(), flush_seconds=0.01, say=said.append)
    write_output(job_dir, b"x\n")
    shipping.add(KEY, job_dir)
    server.refuse = True
    shipping.run_once()
    shipping.run_once()
    assert len(said) == 1 and "refused its output" in said[0]
    done = threading.Event()
    shipping.finish(KEY, job_dir, then=done.set)
    shipping.run_once()
    assert done.is_set()


def test_smaller_chunks_when_the_server_says_too_large(job_dir: Path) -> None:
    server = LogServer()
    limit = 300 * 1024
    plain = server.handle

    def limited(request: httpx.Request) -> httpx.Response:
        if len(request.content) > limit:
            return httpx.Response(413, json={"error": {"code": "too_large", "message": "big"}})
        return plain(request)

    data = b"x" * (MIB + 5)
    write_output(job_dir, data)
    client = ApiClient("http://corral.test", transport=httpx.MockTransport(limited))
    shipper = LogShipper(client, KEY, job_dir)
    assert shipper.ship()
    assert bytes(server.stored) == data
    assert shipper.chunk_bytes == 256 * 1024


def test_each_worker_of_a_gang_ships_its_own_log(tmp_path: Path) -> None:
    servers = {0: LogServer(), 1: LogServer()}
    ranks: list[str | None] = []

    def by_rank(request: httpx.Request) -> httpx.Response:
        ranks.append(request.url.params.get("rank"))
        return servers[int(request.url.params["rank"])].handle(request)

    client = ApiClient("http://corral.test", transport=httpx.MockTransport(by_rank))
    said: list[str] = []
    shipping = LogShipping(client, flush_seconds=0.01, say=said.append)
    for rank in (0, 1):
        key = JobKey(1, 2, rank)
        directory = jobdirs.job_dir(tmp_path, key)
        directory.mkdir(parents=True)
        write_output(directory, b"from worker %d\n" % rank)
        shipping.add(key, directory)
    assert shipping.run_once()
    assert sorted(ranks) == ["0", "1"]
    for rank, server in servers.items():
        assert bytes(server.stored) == b"from worker %d\n" % rank
        assert server.puts == [("/api/v1/agent/jobs/1/attempts/2/log", 0, 14)]
    # Each worker's acknowledged offset is kept in its own directory.
    assert (tmp_path / "jobs" / "1-2-r1" / jobdirs.LOG_OFFSET).read_text() == "14\n"
    servers[1].refuse = True
    write_output(jobdirs.job_dir(tmp_path, JobKey(1, 2, 1)), b"more\n")
    shipping.run_once()
    assert said == [
        "job 1 attempt 2 rank 1: the server refused its output (no job 1); "
        "no more of it will be sent"
    ]
