"""The agent's terminal programs (`corral.agent.terminal`): a host process on a PTY, and
a ``docker exec`` in a container of the test's private Docker engine."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from corral.agent.terminal import ExecProgram, PtyProgram, StartFailed, pump
from corral.agent.usermap import JobAccount
from corral.core import tunnel as wire
from support.docker_engine import DockerEngine


def _me() -> JobAccount:
    return JobAccount(
        name="me",
        uid=os.getuid(),
        gid=os.getgid(),
        groups=(os.getgid(),),
        home="/",
        shell="/bin/sh",
        switch=False,
    )


class Screen:
    """What a program wrote, per channel; wakes waiters on every piece."""

    def __init__(self) -> None:
        self.data: dict[int, bytes] = {wire.STDOUT: b"", wire.STDERR: b""}
        self._cond = threading.Condition()

    def add(self, channel: int, data: bytes) -> None:
        with self._cond:
            self.data[channel] += data
            self._cond.notify_all()

    def wait_for(self, text: bytes, channel: int = wire.STDOUT, timeout: float = 20) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: text in self.data[channel], timeout):
                raise AssertionError(f"{text!r} never came; got {self.data!r}")


def _run(program: Any, screen: Screen, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(target=pump, args=(program, screen.add), kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def test_a_pty_program_resizes_and_reports_its_exit_status(tmp_path: Any) -> None:
    program = PtyProgram(
        ["/bin/sh", "-c", "stty size; read line; stty size; echo got-$line; exit 6"],
        env={"PATH": os.environ["PATH"], "TERM": "xterm"},
        cwd=str(tmp_path),
        account=_me(),
        rows=30,
        cols=100,
    )
    screen = Screen()
    pumping = _run(program, screen)
    try:
        screen.wait_for(b"30 100")
        program.resize(50, 160)
        program.write(b"hello\r")
        screen.wait_for(b"got-hello")
        pumping.join(10)
        assert not pumping.is_alive()
        assert b"50 160" in screen.data[wire.STDOUT]
        assert program.wait() == 6
    finally:
        program.hangup()
        program.close()


def test_a_pty_program_is_hung_up_when_its_job_ends(tmp_path: Any) -> None:
    program = PtyProgram(
        ["/bin/sh", "-c", "echo ready; sleep 60"],
        env={"PATH": os.environ["PATH"]},
        cwd=str(tmp_path),
        account=_me(),
        rows=24,
        cols=80,
    )
    screen = Screen()
    job_running = threading.Event()
    job_running.set()
    result: list[bool] = []
    thread = threading.Thread(
        target=lambda: result.append(
            pump(program, screen.add, job_alive=job_running.is_set, check_seconds=0.05)
        ),
        daemon=True,
    )
    thread.start()
    try:
        screen.wait_for(b"ready")
        job_running.clear()
        thread.join(10)
        assert result == [False]
        assert program.wait() == 128 + 1  # SIGHUP, as from a closed terminal
    finally:
        program.close()


def test_a_command_that_does_not_exist_fails_to_start(tmp_path: Any) -> None:
    with pytest.raises(StartFailed, match="cannot run no-such-cmd: no such file or command"):
        PtyProgram(
            ["no-such-cmd"],
            env={"PATH": "/nonexistent"},
            cwd=str(tmp_path),
            account=_me(),
            rows=24,
            cols=80,
        )


@pytest.fixture
def container(docker_engine: DockerEngine) -> Iterator[tuple[Any, str]]:
    client = docker_engine.client()
    box = client.containers.run(
        docker_engine.image,
        ["sleep", "600"],
        detach=True,
        network_mode="none",
        user="1000:1000",
        environment={"JOB_VAR": "from-the-job"},
        working_dir="/tmp",
    )
    try:
        yield client, box.id
    finally:
        box.remove(force=True)
        client.close()


def test_docker_exec_on_a_terminal(container: tuple[Any, str]) -> None:
    client, box = container
    program = ExecProgram(
        client,
        box,
        ["sh", "-c", "tty; read line; stty size; echo $JOB_VAR $line $(id -u) $TERM; exit 3"],
        tty=True,
        rows=30,
        cols=100,
        env={"TERM": "xterm"},
    )
    screen = Screen()
    pumping = _run(program, screen)
    try:
        program.resize(40, 120)
        program.write(b"typed\r")
        pumping.join(20)
        assert not pumping.is_alive()
        out = screen.data[wire.STDOUT]
        assert out.startswith(b"/dev/pts/")  # nothing lost at the start
        assert b"40 120" in out and b"from-the-job typed 1000 xterm" in out
        assert program.wait() == 3
    finally:
        program.close()


def test_docker_exec_without_a_terminal_keeps_stdout_and_stderr_apart(
    container: tuple[Any, str],
) -> None:
    client, box = container
    program = ExecProgram(
        client,
        box,
        ["sh", "-c", "cat; echo to-stderr >&2; exit 4"],
        tty=False,
        rows=24,
        cols=80,
        env={},
    )
    screen = Screen()
    pumping = _run(program, screen)
    try:
        program.write(b"piped\n")
        program.close_stdin()
        pumping.join(20)
        assert not pumping.is_alive()
        assert screen.data == {wire.STDOUT: b"piped\n", wire.STDERR: b"to-stderr\n"}
        assert program.wait() == 4
    finally:
        program.close()


def test_docker_exec_of_a_missing_command(container: tuple[Any, str]) -> None:
    client, box = container
    program = ExecProgram(client, box, ["no-such-cmd"], tty=False, rows=24, cols=80, env={})
    screen = Screen()
    _run(program, screen).join(20)
    assert program.wait() in (126, 127)
    program.close()
