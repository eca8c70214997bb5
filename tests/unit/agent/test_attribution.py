"""Attribution of GPU processes: job, container (cgroup v1/v2, resolver, labels, name
pattern), user, unknown; the per-process cache; the Docker resolver over a unix socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socketserver
import subprocess
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from corral.agent.attribution import (
    Attribution,
    Attributor,
    DockerResolver,
    container_id_from_cgroup,
)
from corral.core.telemetry import GpuProcess

CID = "4f3c2b1a" * 8  # a 64-hex container id
CID2 = "0123456789abcdef" * 4


class FakeProc:
    """A fake /proc: each process's stat, cgroup, status, cmdline and comm."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(
        self,
        pid: int,
        *,
        ppid: int = 1,
        session: int | None = None,
        start: int = 1000,
        uid: int = 1000,
        cgroup: str = "0::/user.slice/user-1000.slice/session-3.scope\n",
        cmdline: bytes = b"/usr/bin/python3\0train.py\0--lr\0" + b"0.1\0",
        comm: str = "pt_main_thread",
    ) -> None:
        base = self.root / str(pid)
        base.mkdir(parents=True, exist_ok=True)
        sid = pid if session is None else session
        rest = ["S", ppid, sid, sid, 0, -1, 0, 0, 0, 0, 0, 5, 5, 0, 0, 20, 0, 1, 0, start]
        rest += [1 << 20, 100] + [0] * 27
        (base / "stat").write_text(f"{pid} ({comm}) " + " ".join(map(str, rest)) + "\n")
        (base / "cgroup").write_text(cgroup)
        (base / "status").write_text(
            f"Name:\t{comm}\nPid:\t{pid}\nUid:\t{uid}\t{uid + 1}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n"
        )
        (base / "cmdline").write_bytes(cmdline)
        (base / "comm").write_text(f"{comm}\n")

    def remove(self, pid: int) -> None:
        base = self.root / str(pid)
        for child in base.iterdir():
            child.unlink()
        base.rmdir()


class Resolver:
    def __init__(self, known: Mapping[str, tuple[str, Mapping[str, str]]]) -> None:
        self.known = known
        self.asked: list[str] = []

    def __call__(self, container_id: str) -> tuple[str, Mapping[str, str]] | None:
        self.asked.append(container_id)
        return self.known.get(container_id)


NAMES = {1000: "alice", 1001: "bob", 0: "root"}


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


def attributor(proc: FakeProc, resolver: Resolver | None = None, **kwargs: Any) -> Attributor:
    return Attributor(
        proc_root=str(proc.root),
        resolver=resolver or Resolver({}),
        uid_name=lambda uid: NAMES.get(uid, str(uid)),
        **kwargs,
    )


# ---------------------------------------------------------------------- jobs


def test_a_process_in_a_job_session_is_the_jobs(proc: FakeProc) -> None:
    proc.add(500, comm="sh")  # the shim, leading session 500
    proc.add(501, ppid=500, session=500)
    found = attributor(proc).attribute_pid(501, {500: (42, 1)})
    assert found == Attribution(
        "job", job_id=42, rank=1, user="alice", command="python3"
    )  # argv[0]'s base name, not comm ("pt_main_thread")


def test_a_job_process_that_left_the_session_is_found_by_its_ancestors(proc: FakeProc) -> None:
    proc.add(500, comm="sh")
    proc.add(510, ppid=500, session=500, cmdline=b"torchrun\0train.py\0")
    proc.add(520, ppid=510, session=520)  # called setsid
    proc.add(530, ppid=520, session=520)
    found = attributor(proc).attribute_pid(530, {500: (7, 0)})
    assert (found.owner, found.job_id, found.rank) == ("job", 7, 0)
    # the same process is nobody's job once the job is not running
    assert attributor(proc).attribute_pid(530, {}).owner == "user"


def test_a_container_of_a_corral_job_is_the_jobs(proc: FakeProc) -> None:
    proc.add(600, cgroup=f"12:memory:/docker/{CID}\n")
    resolver = Resolver({CID: ("alice_job", {"corral.user": "mallory"})})
    found = attributor(proc, resolver).attribute_pid(600, {}, job_containers={CID: (9, 2)})
    assert (found.owner, found.job_id, found.rank, found.command) == ("job", 9, 2, "python3")


# ---------------------------------------------------------------------- containers


@pytest.mark.parametrize(
    "cgroup",
    [
        # cgroup v1, cgroupfs driver (the lab's Docker)
        f"12:pids:/docker/{CID}\n11:memory:/docker/{CID}\n1:name=systemd:/docker/{CID}\n",
        # cgroup v2, systemd driver
        f"0::/system.slice/docker-{CID}.scope\n",
        # containerd through the CRI, systemd driver
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b.slice/"
        f"cri-containerd-{CID}.scope\n",
        # a process in a nested cgroup of the container (systemd inside it)
        f"0::/system.slice/docker-{CID}.scope/init.scope\n",
    ],
    ids=["v1-cgroupfs", "v2-systemd", "v2-cri-containerd", "v2-nested"],
)
def test_container_found_by_cgroup_and_named_by_resolver(proc: FakeProc, cgroup: str) -> None:
    proc.add(700, uid=0, cgroup=cgroup)
    resolver = Resolver({CID: ("alice_train_v2", {})})
    found = attributor(proc, resolver).attribute_pid(700, {})
    assert found == Attribution(
        "container", container="alice_train_v2", user="alice", command="python3"
    )
    assert resolver.asked == [CID]


def test_container_user_label_wins_over_the_name_pattern(proc: FakeProc) -> None:
    proc.add(701, cgroup=f"0::/system.slice/docker-{CID}.scope\n")
    resolver = Resolver({CID: ("alice_shared", {"corral.user": "bob"})})
    assert attributor(proc, resolver).attribute_pid(701, {}).user == "bob"


def test_container_user_from_a_configured_pattern(proc: FakeProc) -> None:
    proc.add(702, cgroup=f"9:memory:/docker/{CID}\n")
    resolver = Resolver({CID: ("gpu-carol-exp1", {})})
    custom = attributor(proc, resolver, user_pattern=r"^gpu-(?P<user>[a-z]+)-")
    assert custom.attribute_pid(702, {}).user == "carol"
    # the default pattern does not match that name: no user rather than a wrong one
    assert attributor(proc, resolver).attribute_pid(702, {}).user is None
    with pytest.raises(ValueError, match="user"):
        attributor(proc, resolver, user_pattern=r"^gpu-([a-z]+)-")


def test_container_docker_cannot_name_shows_its_short_id(proc: FakeProc) -> None:
    proc.add(703, cgroup=f"0::/system.slice/docker-{CID}.scope\n")
    found = attributor(proc, Resolver({})).attribute_pid(703, {})
    assert (found.owner, found.container, found.user) == ("container", CID[:12], None)

    def broken(container_id: str) -> None:
        raise RuntimeError("docker is confused")

    found = Attributor(proc_root=str(proc.root), resolver=broken).attribute_pid(703, {})
    assert (found.owner, found.container) == ("container", CID[:12])


def test_container_id_from_cgroup_forms() -> None:
    assert container_id_from_cgroup(f"0::/docker/{CID}/docker/{CID2}\n") == CID2  # innermost
    assert container_id_from_cgroup(f"0::/system.slice/libpod-{CID}.scope\n") == CID
    assert container_id_from_cgroup(f"0::/system.slice/crio-{CID}.scope\n") == CID
    assert container_id_from_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n") is None
    assert container_id_from_cgroup("4:memory:/process_api/b00a2ae0b04ff600378f896d\n") is None
    assert container_id_from_cgroup(f"0::/x{CID}\n") is None  # not a component of its own
    assert container_id_from_cgroup("0::/system.slice/containerd.service\n") is None


# ---------------------------------------------------------------------- users, unknown


def test_a_plain_process_is_its_unix_users(proc: FakeProc) -> None:
    proc.add(800, uid=1001, cmdline=b"", comm="cuda_worker")  # no argv: comm
    proc.add(801, uid=4242)
    att = attributor(proc)
    assert att.attribute_pid(800, {999: (1, 0)}) == Attribution(
        "user", user="bob", command="cuda_worker"
    )
    assert att.attribute_pid(801, {}).user == "4242"  # no such user: the number


def test_default_uid_names_use_passwd_and_fall_back_to_the_number(proc: FakeProc) -> None:
    proc.add(802, uid=0)
    proc.add(803, uid=3999999)
    att = Attributor(proc_root=str(proc.root), resolver=Resolver({}))
    assert att.attribute_pid(802, {}).user == "root"
    assert att.attribute_pid(803, {}).user == "3999999"


def test_a_vanished_or_unreadable_process_is_unknown(proc: FakeProc) -> None:
    att = attributor(proc)
    assert att.attribute_pid(999, {}) == Attribution("unknown")
    proc.add(900)
    (proc.root / "900" / "stat").write_text("garbage\n")
    assert att.attribute_pid(900, {}).owner == "unknown"


def test_command_is_short(proc: FakeProc) -> None:
    proc.add(901, cmdline=b"ray::TrainWorker.train() --with=many args\0")  # setproctitle
    proc.add(902, cmdline=b"/opt/" + b"x" * 400 + b"\0")
    att = attributor(proc)
    assert att.attribute_pid(901, {}).command == "ray::TrainWorker.train()"
    command = att.attribute_pid(902, {}).command
    assert command is not None and len(command) == 256


# ---------------------------------------------------------------------- cache, fill


def test_facts_are_cached_per_pid_and_start_time(proc: FakeProc) -> None:
    proc.add(950, uid=1000, cgroup=f"0::/docker/{CID}\n")
    resolver = Resolver({CID: ("alice_a", {}), CID2: ("bob_b", {})})
    att = attributor(proc, resolver)
    assert att.attribute_pid(950, {}).container == "alice_a"
    # same process (same start time): what was read stays; cgroup is not read again
    (proc.root / "950" / "cgroup").write_text(f"0::/docker/{CID2}\n")
    assert att.attribute_pid(950, {}).container == "alice_a"
    # the pid reused by another process (another start time): read afresh
    proc.remove(950)
    proc.add(950, start=5000, uid=1001, cgroup=f"0::/docker/{CID2}\n")
    found = att.attribute_pid(950, {})
    assert (found.container, found.user) == ("bob_b", "bob")
    # and once it is gone, it is unknown rather than what the cache says
    proc.remove(950)
    assert att.attribute_pid(950, {}).owner == "unknown"


def test_attribute_sets_owner_fields_of_gpu_processes_and_keeps_the_rest(proc: FakeProc) -> None:
    proc.add(500, comm="sh")
    proc.add(501, ppid=500, session=500)
    proc.add(700, uid=0, cgroup=f"11:memory:/docker/{CID}\n")
    proc.add(800, uid=1001)
    resolver = Resolver({CID: ("/alice_notebook", {})})  # Docker's names start with "/"
    processes = [
        GpuProcess(pid=501, used_memory_bytes=4 << 30),
        GpuProcess(pid=700, used_memory_bytes=2 << 30),
        GpuProcess(pid=800, used_memory_bytes=1 << 30),
        GpuProcess(pid=12345, used_memory_bytes=1 << 20),
    ]
    filled = attributor(proc, resolver).attribute(processes, {500: (3, 0)})
    assert [(p.pid, p.used_memory_bytes, p.owner) for p in filled] == [
        (501, 4 << 30, "job"),
        (700, 2 << 30, "container"),
        (800, 1 << 30, "user"),
        (12345, 1 << 20, "unknown"),
    ]
    assert (filled[0].job_id, filled[0].rank, filled[0].managed) == (3, 0, True)
    assert (filled[1].container, filled[1].user, filled[1].managed) == (
        "alice_notebook",
        "alice",
        False,
    )
    assert filled[2].user == "bob"
    assert filled[3].command is None and filled[3].user is None


def test_real_process_in_a_job_session() -> None:
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        att = Attributor(resolver=Resolver({}))
        found = att.attribute_pid(child.pid, {child.pid: (11, 0)})
        assert (found.owner, found.job_id, found.command) == ("job", 11, "sleep")
        alone = att.attribute_pid(child.pid, {})
        assert alone.owner in ("user", "container")  # "container" if this test runs in one
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    assert att.attribute_pid(child.pid, {child.pid: (11, 0)}).owner == "unknown"


# ---------------------------------------------------------------------- Docker resolver


class _Engine(BaseHTTPRequestHandler):
    containers: dict[str, dict[str, object]] = {}
    requests: list[str] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        cid = self.path.removeprefix("/containers/").removesuffix("/json")
        body = self.containers.get(cid)
        payload = json.dumps(body if body is not None else {"message": "No such container"})
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload.encode())

    def address_string(self) -> str:  # a unix socket has no host and port
        return "docker.sock"

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Path]:
    """A fake Docker Engine API on a private unix socket."""
    path = tmp_path / "docker.sock"
    _Engine.containers = {
        CID: {"Name": "/alice_train", "Config": {"Labels": {"corral.user": "alice", "x": "1"}}},
        CID2: {"Name": "/bob_eval", "Config": {"Labels": None}},
    }
    _Engine.requests = []
    server = _UnixHTTPServer(str(path), _Engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_docker_resolver_names_containers_and_caches(engine: Path) -> None:
    now = [0.0]
    resolver = DockerResolver(str(engine), clock=lambda: now[0], ttl=300, negative_ttl=60)
    try:
        assert resolver(CID) == ("alice_train", {"corral.user": "alice", "x": "1"})
        assert resolver(CID2) == ("bob_eval", {})
        assert resolver("f" * 64) is None  # not Docker's
        assert resolver("../../etc") is None  # not an id: never sent
        assert resolver(CID) == ("alice_train", {"corral.user": "alice", "x": "1"})
        assert resolver("f" * 64) is None
        assert len(_Engine.requests) == 3  # answers and failures are cached
        now[0] = 301.0
        resolver(CID)
        resolver("f" * 64)
        assert len(_Engine.requests) == 5
    finally:
        resolver.close()


def test_docker_resolver_without_docker_returns_none(tmp_path: Path) -> None:
    resolver = DockerResolver(str(tmp_path / "no-docker.sock"))
    assert resolver(CID) is None
    not_a_server = tmp_path / "dead.sock"
    not_a_server.write_text("")  # exists, nobody listens
    assert DockerResolver(str(not_a_server), timeout=0.2)(CID) is None


def test_docker_resolver_socket_from_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/corral-test/docker.sock")
    assert DockerResolver().socket_path == "/run/corral-test/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    assert DockerResolver().socket_path == "/var/run/docker.sock"


def test_attributor_with_the_docker_resolver(engine: Path, proc: FakeProc) -> None:
    proc.add(1200, uid=0, cgroup=f"0::/system.slice/docker-{CID2}.scope\n")
    resolver = DockerResolver(str(engine))
    try:
        found = Attributor(proc_root=str(proc.root), resolver=resolver).attribute_pid(1200, {})
    finally:
        resolver.close()
    assert (found.owner, found.container, found.user) == ("container", "bob_eval", "bob")
