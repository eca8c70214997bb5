"""Programs started for a terminal session (``corral bash``/``exec``), on the agent.

Three kinds, behind one small interface (`Program`):

- `PtyProgram`: a host process on a new pseudo-terminal, in its own session with the
  terminal as its controlling terminal (so Ctrl-C, sent as the byte 0x03, becomes
  SIGINT for the program in the foreground, and a resize SIGWINCH), as the job's Unix
  account, with the job's environment, in its working directory;
- `PipeProgram`: the same without a terminal (stdin, stdout and stderr are pipes), for
  ``corral exec`` from a script;
- `ExecProgram`: a ``docker exec`` in a container job's container (the low-level API:
  ``exec_create``/``exec_start(socket=True)``/``exec_resize``/``exec_inspect``), which
  runs as the container's user with the container's environment.

`pump` copies a program's output to the session until the program has ended and its
output is drained.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from corral.agent.usermap import JobAccount
from corral.core import tunnel as wire

# Run bash where the job has one (an interactive shell, not a login shell: a login
# shell's profile would reset the job's PATH), else sh.
DEFAULT_SHELL = [
    "/bin/sh",
    "-c",
    "if command -v bash >/dev/null 2>&1; then exec bash; fi; exec sh",
]
HANGUP_GRACE_SECONDS = 3.0  # after SIGHUP, before SIGKILL, when the user has gone
_POLL_SECONDS = 0.2


class StartFailed(Exception):
    """The program could not be started; ``str(exc)`` is for the user."""


def exit_status(returncode: int) -> int:
    """A shell's view of a `subprocess` return code: a death by signal N is 128+N."""
    return 128 - returncode if returncode < 0 else returncode


class Output:
    """One output stream of a program: a file descriptor to `select` on, and how to turn
    what it reads into (channel, bytes) pieces."""

    def __init__(self, fd: int, channel: int, *, demux: bool = False, early: bytes = b"") -> None:
        self.fd = fd
        self.channel = channel
        self._demux = demux  # Docker's 8-byte frame headers (a non-tty exec)
        self._pending = b""
        self._early = early  # read already, before the stream was handed over

    def fileno(self) -> int:
        return self.fd

    def take_early(self) -> list[tuple[int, bytes]]:
        """What was read before the stream was handed over (see `ExecProgram`)."""
        early, self._early = self._early, b""
        return self._split(early) if early else []

    def read(self) -> list[tuple[int, bytes]] | None:
        """What is there to read now; None at the end of the stream."""
        try:
            data = os.read(self.fd, wire.CHUNK_BYTES)
        except BlockingIOError:
            return []
        except OSError:  # EIO: a PTY whose other side is closed
            return None
        if not data:
            return None
        return self._split(data)

    def _split(self, data: bytes) -> list[tuple[int, bytes]]:
        if not self._demux:
            return [(self.channel, data)]
        self._pending += data
        pieces = []
        while len(self._pending) >= 8:
            kind, size = self._pending[0], struct.unpack(">I", self._pending[4:8])[0]
            if len(self._pending) < 8 + size:
                break
            chunk, self._pending = self._pending[8 : 8 + size], self._pending[8 + size :]
            pieces.append((wire.STDERR if kind == 2 else wire.STDOUT, chunk))
        return pieces


class Program(Protocol):
    """A program a terminal session runs. All methods return at once except `wait`."""

    @property
    def pid(self) -> int | None:
        """Its session's id on the host, when it has one (for monitoring)."""
        ...

    def outputs(self) -> Sequence[Output]: ...

    def write(self, data: bytes) -> None:
        """Bytes for its stdin (keystrokes on a terminal)."""
        ...

    def close_stdin(self) -> None: ...

    def resize(self, rows: int, cols: int) -> None: ...

    def poll(self) -> int | None:
        """Its exit status once it has ended (death by signal N: 128+N), else None."""
        ...

    def wait(self) -> int | None:
        """Its exit status, waiting a moment for it once its output has ended."""
        ...

    def hangup(self) -> None:
        """The user has gone: end it as a closed terminal would (SIGHUP, then SIGKILL)."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- host processes


def _identity(account: JobAccount) -> dict[str, Any]:
    if not account.switch:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}


def _take_terminal() -> None:
    # In the child, after setsid(): make the PTY (its stdin) the controlling terminal,
    # so the terminal's signals (Ctrl-C, window changes) reach the foreground program.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_window_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class _HostProgram:
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int | None:
        return self.popen.pid

    def poll(self) -> int | None:
        code = self.popen.poll()
        return None if code is None else exit_status(code)

    def wait(self) -> int | None:
        try:
            return exit_status(self.popen.wait(HANGUP_GRACE_SECONDS))
        except subprocess.TimeoutExpired:
            return None

    def hangup(self) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGHUP)
            os.killpg(self.popen.pid, signal.SIGCONT)  # a stopped job must see it too
        threading.Thread(target=self._reap, name="corral-terminal-reap", daemon=True).start()

    def _reap(self) -> None:
        try:
            self.popen.wait(HANGUP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


class PtyProgram(_HostProgram):
    """``argv`` on a new pseudo-terminal of ``rows`` x ``cols`` (see the module doc)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        account: JobAccount,
        rows: int,
        cols: int,
    ) -> None:
        master, slave = pty.openpty()
        try:
            set_window_size(master, rows, cols)
            if account.switch:
                os.fchown(slave, account.uid, -1)  # the user's own terminal, as with ssh
            self.popen = subprocess.Popen(
                list(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
                preexec_fn=_take_terminal,  # an ioctl only: safe after fork
                **_identity(account),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(master)
            raise StartFailed(f"cannot run {argv[0]}: {_reason(exc)}") from None
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.master = master

    def outputs(self) -> Sequence[Output]:
        return [Output(self.master, wire.STDOUT)]

    def write(self, data: bytes) -> None:
        _write_all(self.master, data)

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            _write_all(self.master, b"\x04")  # what Ctrl-D types: end of input

    def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(OSError):
            set_window_size(self.master, rows, cols)  # the kernel sends SIGWINCH

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.master)


class PipeProgram(_HostProgram):
    """``argv`` with pipes for stdin, stdout and stderr (no terminal)."""

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str, account: JobAccount
    ) -> None:
        try:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
                **_identity(account),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise StartFailed(f"cannot run {argv[0]}: {_reason(exc)}") from None
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self._outputs = [
            Output(self.popen.stdout.fileno(), wire.STDOUT),
            Output(self.popen.stderr.fileno(), wire.STDERR),
        ]

    def outputs(self) -> Sequence[Output]:
        return self._outputs

    def write(self, data: bytes) -> None:
        stdin = self.popen.stdin
        with contextlib.suppress(OSError, ValueError):  # it stopped reading
            assert stdin is not None
            stdin.write(data)
            stdin.flush()

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.popen.stdin is not None
            self.popen.stdin.close()

    def resize(self, rows: int, cols: int) -> None:
        pass

    def close(self) -> None:
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], _POLL_SECONDS)
            continue
        view = view[written:]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file or command"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


# ---------------------------------------------------------------- containers


class ExecProgram:
    """``argv`` run in container ``container`` through ``client`` (a
    ``docker.DockerClient``), on a terminal when ``tty``."""

    # A container's processes are attributed to its job by their cgroup already.
    pid: int | None = None

    def __init__(
        self,
        client: Any,
        container: str,
        argv: Sequence[str],
        *,
        tty: bool,
        rows: int,
        cols: int,
        env: Mapping[str, str],
    ) -> None:
        import docker.errors

        self._api = client.api
        self._tty = tty
        try:
            self.exec_id = self._api.exec_create(
                container,
                list(argv),
                stdin=True,
                stdout=True,
                stderr=True,
                tty=tty,
                environment=dict(env),
            )["Id"]
            raw = self._api.exec_start(self.exec_id, socket=True, tty=tty)
        except docker.errors.APIError as exc:
            raise StartFailed(f"Docker refused the exec: {exc.explanation or exc}") from None
        self._socket: socket.socket = getattr(raw, "_sock", raw)
        self._socket.setblocking(False)
        self._early = _buffered(raw)
        self._code: int | None = None
        self._ended = False
        if tty:
            # Docker before API 1.42 cannot start an exec at a size: it is set at once
            # after the start (a shell sees it by its SIGWINCH).
            self.resize(rows, cols)

    def outputs(self) -> Sequence[Output]:
        early, self._early = self._early, b""
        return [Output(self._socket.fileno(), wire.STDOUT, demux=not self._tty, early=early)]

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self._socket.send(view) :]
            except BlockingIOError:
                select.select([], [self._socket], [], _POLL_SECONDS)
            except OSError:
                return

    def close_stdin(self) -> None:
        if self._tty:
            self.write(b"\x04")
        else:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_WR)

    def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(Exception):  # the exec has just ended: nothing to resize
            self._api.exec_resize(self.exec_id, height=rows, width=cols)

    def _inspect(self) -> dict[str, Any]:
        try:
            return dict(self._api.exec_inspect(self.exec_id))
        except Exception:  # the container is gone
            return {"Running": False, "ExitCode": None}

    def poll(self) -> int | None:
        # The output stream ends when the exec does; until then it runs.
        return self._code

    def wait(self) -> int | None:
        """The exec's exit code, once Docker has recorded it."""
        deadline = time.monotonic() + HANGUP_GRACE_SECONDS
        while True:
            state = self._inspect()
            if not state.get("Running") or time.monotonic() > deadline:
                code = state.get("ExitCode")
                self._code = code if isinstance(code, int) else None
                return self._code
            time.sleep(0.05)

    def hangup(self) -> None:
        # Docker leaves an exec running when its client goes: end it as a closed
        # terminal would, by its host PID (the agent runs as root, as dockerd does).
        pid = self._inspect().get("Pid")
        if isinstance(pid, int) and pid > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGHUP)
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.close()


def _buffered(raw: Any) -> bytes:
    """Output the HTTP client read ahead with the answer to the exec's start: it sits in
    the response's buffer, not in the socket (the Docker SDK hands out the socket)."""
    reader = getattr(
        getattr(getattr(getattr(raw, "_response", None), "raw", None), "_fp", None), "fp", None
    )
    if reader is None or not hasattr(reader, "peek"):
        return b""
    try:
        ahead = reader.peek()  # the socket is non-blocking: no wait when nothing is there
    except (OSError, ValueError):
        return b""
    return bytes(reader.read(len(ahead))) if ahead else b""


# ---------------------------------------------------------------- output


def pump(
    program: Program,
    send: Callable[[int, bytes], None],
    *,
    job_alive: Callable[[], bool] = lambda: True,
    check_seconds: float = 1.0,
) -> bool:
    """Send ``program``'s output until it has ended and what it wrote is drained (its
    background children may keep the streams open: they are not waited for).
    Hangs the program up when ``job_alive`` turns False (checked every
    ``check_seconds``). Returns False when the job ended first."""
    streams = {o.fileno(): o for o in program.outputs()}
    for stream in streams.values():
        for channel, data in stream.take_early():
            send(channel, data)
    next_check = time.monotonic() + check_seconds
    job_ended = False
    while streams:
        ready, _, _ = select.select(list(streams), [], [], _POLL_SECONDS)
        for fd in ready:
            pieces = streams[fd].read()
            if pieces is None:
                del streams[fd]
                continue
            for channel, data in pieces:
                send(channel, data)
        if not ready and program.poll() is not None:
            break  # ended, and nothing more is waiting to be read
        if not job_ended and time.monotonic() >= next_check:
            next_check = time.monotonic() + check_seconds
            if not job_alive():
                job_ended = True
                program.hangup()
    return not job_ended
