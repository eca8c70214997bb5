"""`corral.cli.local`: the child-process orchestration behind `corral up` and `corral demo`.

The children are tiny Python processes; every test stops what it started (the group's
context manager does, by PID), and nothing sleeps to wait for something it can poll.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from corral.cli.local import ProcessGroup, port_in_use, wait_for_file, wait_until_healthy
from corral.core.errors import CorralError

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
# Ignores SIGTERM, so only SIGKILL ends it; it prints once the handler is in place.
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)",
]


def wait_for_output(path: Path, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{path} never showed {text!r}"
        time.sleep(0.02)


def test_children_are_stopped_on_leaving_and_their_output_is_logged(tmp_path: Path) -> None:
    with ProcessGroup(grace_seconds=5) as group:
        first = group.start("first", SLEEPER, log_path=tmp_path / "logs" / "first.log")
        second = group.start("second", SLEEPER, log_path=tmp_path / "second.log", tier=1)
        wait_for_output(first.log_path, "up")
        assert group.exited() is None

    assert first.process.returncode == -signal.SIGTERM
    assert second.process.returncode == -signal.SIGTERM
    assert (tmp_path / "logs" / "first.log").read_text() == "up\n"


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    group = ProcessGroup(grace_seconds=0.3)
    child = group.start("stubborn", STUBBORN, log_path=tmp_path / "s.log")
    wait_for_output(child.log_path, "ready")
    started = time.monotonic()

    group.stop_all()

    assert child.process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_higher_tiers_stop_first(tmp_path: Path) -> None:
    # The server (tier 0) must outlive the agents (tier 1) so they can say goodbye: while
    # the stubborn agent is being waited for, the server must still be running.
    group = ProcessGroup(grace_seconds=0.3)
    server = group.start("server", SLEEPER, log_path=tmp_path / "server.log", tier=0)
    agent = group.start("agent", STUBBORN, log_path=tmp_path / "agent.log", tier=1)
    wait_for_output(agent.log_path, "ready")
    wait_for_output(server.log_path, "up")

    group._stop([agent])  # the first step of stop_all
    assert server.process.poll() is None
    group.stop_all()
    assert server.process.returncode == -signal.SIGTERM


def test_supervise_returns_the_child_that_died(tmp_path: Path) -> None:
    crash = [sys.executable, "-c", "import sys; print('boom: no GPUs'); sys.exit(3)"]
    with ProcessGroup(grace_seconds=1) as group:
        group.start("sleeper", SLEEPER, log_path=tmp_path / "a.log")
        group.start("the agent", crash, log_path=tmp_path / "b.log")

        dead = group.supervise()

    assert dead is not None
    assert dead.name == "the agent"
    message = dead.describe_exit()
    assert message.startswith(f"the agent (pid {dead.pid}) exited with code 3")
    assert "boom: no GPUs" in message


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_to_the_parent_are_handled_like_ctrl_c(signum: int) -> None:
    before = signal.getsignal(signum)
    with ProcessGroup() as group:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signum)
        assert group.children == []
    assert signal.getsignal(signum) is before


def test_wait_until_healthy_polls_until_ok() -> None:
    answers = iter([503, 503, 200])

    def health(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status != 200:
            return httpx.Response(status, json={"error": {"code": "unavailable", "message": "x"}})
        return httpx.Response(200, json={"status": "ok", "version": "0.1.0"})

    version = wait_until_healthy(
        "http://127.0.0.1:1", timeout_seconds=10, transport=httpx.MockTransport(health)
    )

    assert version == "0.1.0"


def test_wait_until_healthy_gives_up_at_the_deadline() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(CorralError, match=r"did not answer within 0\.3s"):
        wait_until_healthy(
            "http://127.0.0.1:1", timeout_seconds=0.3, transport=httpx.MockTransport(refuse)
        )


def test_wait_until_healthy_fails_fast_when_the_server_dies(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    crash = [sys.executable, "-c", "print('database is locked'); raise SystemExit(1)"]
    with ProcessGroup() as group:
        child = group.start("the server", crash, log_path=tmp_path / "server.log")
        with pytest.raises(CorralError, match="the server did not start") as raised:
            wait_until_healthy(
                "http://127.0.0.1:1",
                timeout_seconds=30,
                child=child,
                transport=httpx.MockTransport(refuse),
            )
    assert "database is locked" in str(raised.value)


def test_port_in_use() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)


def test_wait_for_file(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text("  t-admin\n")
    assert wait_for_file(path, timeout_seconds=1) == "t-admin"

    with pytest.raises(CorralError, match=r"did not appear within 0\.1s"):
        wait_for_file(tmp_path / "missing", timeout_seconds=0.1)
