"""Drive a command on a real pseudo-terminal, as a person at a terminal would.

`PtySession` starts a command with a new PTY as its controlling terminal (Python's
``pty`` module; no tmux or pexpect needed), types into it, resizes it (which sends the
command SIGWINCH, as a terminal window does) and waits for text on its screen with a
deadline. The process is stopped by PID in `close` (use it as a context manager).
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Mapping, Sequence


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtySession:
    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], rows: int = 24, cols: int = 80
    ) -> None:
        master, slave = os.openpty()
        self.master = master
        self.resize(rows, cols)
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=dict(env),
                start_new_session=True,
                preexec_fn=_take_terminal,
            )
        finally:
            os.close(slave)
        self.screen = b""  # everything the command wrote
        self._seen = 0  # where the next `expect` starts looking

    def __enter__(self) -> PtySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resize(self, rows: int, cols: int) -> None:
        """Change the window size (the kernel sends SIGWINCH to the foreground job)."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the command and everything on its terminal have exited
            return False
        self.screen += data
        if b"\x1b[6n" in data:  # "where is the cursor?" (line editors ask): answer as a terminal
            os.write(self.master, b"\x1b[1;1R")
        return bool(data)

    def expect(self, pattern: str, timeout: float = 20) -> re.Match[bytes]:
        """Wait for ``pattern`` (a regular expression) in output not matched before."""
        regex = re.compile(pattern.encode())
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.screen, self._seen)
            if match:
                self._seen = match.end()
                return match
            left = deadline - time.monotonic()
            if left <= 0 or (not self._read(min(left, 0.2)) and not regex.search(self.screen)):
                tail = self.screen[-2000:].decode(errors="replace")
                raise AssertionError(f"timed out waiting for {pattern!r}; screen ends:\n{tail}")

    def wait(self, timeout: float = 20) -> int:
        """The command's exit code, reading its last output meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                while self._read(0.05):
                    if not select.select([self.master], [], [], 0)[0]:
                        break
                return self.proc.returncode
            self._read(0.1)
        raise AssertionError(f"the command did not exit within {timeout}s")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self.master)
