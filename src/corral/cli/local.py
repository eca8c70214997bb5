"""Run Corral's processes as children of this one (for ``corral up`` and ``corral demo``).

`ProcessGroup` starts children, notices when one dies, and stops them all — by PID,
SIGTERM first, SIGKILL after a grace period — however the parent ends (normal exit,
error, Ctrl-C or SIGTERM). `wait_until_healthy` polls the server's ``/health`` with a
deadline. Nothing here knows what the children are; `corral.cli.up` decides that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx

from corral.client import ApiClient
from corral.core.errors import CorralError

POLL_SECONDS = 0.2


@dataclass
class Child:
    """One started process. ``tier``: children of higher tiers are stopped first."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    tier: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def describe_exit(self) -> str:
        """``the agent (pid 42) exited with code 1; its last output: …``."""
        code = self.process.returncode
        how = (
            f"was killed by signal {-code}"
            if code is not None and code < 0
            else (f"exited with code {code}")
        )
        text = f"{self.name} (pid {self.pid}) {how}"
        last = tail(self.log_path)
        if last:
            text += f"; the end of {self.log_path}:\n" + "\n".join(f"  {ln}" for ln in last)
        else:
            text += f"; see {self.log_path}"
        return text


def tail(path: Path, lines: int = 10) -> list[str]:
    """The last ``lines`` lines of a (log) file, or [] when it cannot be read."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class ProcessGroup:
    """Children started together and stopped together, by PID.

    Use it as a context manager: inside, SIGTERM and SIGINT raise KeyboardInterrupt (so
    ``kill PARENT`` cleans up like Ctrl-C does), and on leaving, every child still
    running is stopped::

        with ProcessGroup() as group:
            group.start("server", [sys.executable, "-m", "corral", "server"], log_path=…)
            dead = group.supervise()   # until Ctrl-C/SIGTERM (None) or a child dies
    """

    def __init__(self, *, grace_seconds: float = 10.0) -> None:
        self.grace_seconds = grace_seconds
        self.children: list[Child] = []
        self._previous_handlers: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def __enter__(self) -> ProcessGroup:
        # SIGINT too: a parent started in the background (`corral up &`) has SIGINT
        # ignored, and `kill -INT` must still stop it cleanly.
        for signum in _STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, _interrupt)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop_all()
        finally:
            for signum, handler in self._previous_handlers.items():
                if handler is not None:  # None: set outside Python, cannot be restored
                    signal.signal(signum, handler)
            self._previous_handlers.clear()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        tier: int = 0,
    ) -> Child:
        """Start ``argv`` with its stdout and stderr appended to ``log_path``.

        The child gets a session of its own so that the terminal's Ctrl-C reaches only
        this process, which then stops the children in order (agents before the server).
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        child = Child(name=name, process=process, log_path=log_path, tier=tier)
        self.children.append(child)
        return child

    def exited(self) -> Child | None:
        """The first child that has ended, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def supervise(self) -> Child | None:
        """Block until Ctrl-C or SIGTERM (returns None) or until a child ends (returns it)."""
        try:
            while True:
                dead = self.exited()
                if dead is not None:
                    return dead
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            return None

    def stop_all(self) -> None:
        """Stop every child still running: highest tier first, each tier together."""
        for tier in sorted({c.tier for c in self.children}, reverse=True):
            self._stop([c for c in self.children if c.tier == tier])

    def _stop(self, children: Sequence[Child]) -> None:
        running = [c for c in children if c.process.poll() is None]
        for child in running:
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(child, signal.SIGKILL)
                child.process.wait()


def _signal(child: Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.process.send_signal(signum)  # by PID; Popen knows if it was already reaped


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound now (probed the way the server will bind)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # The server sets SO_REUSEADDR too; without it, old TIME_WAIT sockets would look busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def wait_until_healthy(
    url: str,
    *,
    timeout_seconds: float,
    child: Child | None = None,
    transport: httpx.BaseTransport | None = None,
) -> str:
    """Poll ``GET /health`` until it answers ok; return the server's version.

    Fails early if ``child`` (the server process) ends, and after ``timeout_seconds``.
    """
    deadline = time.monotonic() + timeout_seconds
    with ApiClient(url, timeout=2.0, transport=transport) as api:
        while True:
            if child is not None and child.process.poll() is not None:
                raise CorralError(f"the server did not start: {child.describe_exit()}")
            try:
                body = api.get("/health")
                if isinstance(body, dict) and body.get("status") == "ok":
                    return str(body.get("version", ""))
            except CorralError:
                pass  # not listening yet, or still starting up
            if time.monotonic() > deadline:
                where = f"; see {child.log_path}" if child is not None else ""
                raise CorralError(
                    f"the server at {url} did not answer within {timeout_seconds:g}s{where}"
                )
            time.sleep(POLL_SECONDS)


def wait_for_file(path: Path, *, timeout_seconds: float) -> str:
    """The stripped contents of ``path`` once it exists and is not empty."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            text = path.read_text().strip()
            if text:
                return text
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CorralError(f"cannot read {path}: {exc.strerror}") from exc
        if time.monotonic() > deadline:
            raise CorralError(f"{path} did not appear within {timeout_seconds:g}s")
        time.sleep(POLL_SECONDS)
