"""The wire format of interactive sessions: terminals (``corral bash``/``exec``) and port
streams (``corral port-forward``, the port URLs), shared by the CLI, server and agent.

A session is two WebSockets, user ⇄ server and server ⇄ agent (the agent dials out for
each session, see docs/interactive.md). The server relays messages unchanged; it adds
only its own ``error`` message when a session cannot be set up.

Binary messages carry data. In a terminal session the first byte is the channel
(`STDIN`, `STDOUT`, `STDERR`) and the rest is bytes of that stream; in a port stream the
whole message is bytes of the TCP stream.

Text messages are control messages, one JSON object each, with a ``type``:

``{"type": "start", ...}``
    user → server, the first message of a terminal: `TerminalStart`.
``{"type": "resize", "rows": R, "cols": C}``
    user → agent: the terminal's window changed (the agent sets the PTY's size, which
    sends SIGWINCH to the program in the foreground).
``{"type": "eof"}``
    either way: this side sends no more data (a terminal's stdin is closed; a TCP
    stream is half-closed).
``{"type": "exit", "code": N}``
    agent → user: the command ended with exit status N (death by signal S: 128+S);
    the last message of a terminal session.
``{"type": "error", "message": "..."}``
    agent or server → user: the session failed; the connection closes after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

STDIN = 0
STDOUT = 1
STDERR = 2
CHANNELS = (STDIN, STDOUT, STDERR)

MAX_TERMINAL_SIZE = 10_000  # rows or columns
MAX_PORT = 65535
MAX_PORTS_PER_JOB = 16
DEFAULT_ROWS = 24
DEFAULT_COLS = 80
DEFAULT_TERM = "xterm-256color"
CHUNK_BYTES = 64 * 1024  # the most data one message carries


class ProtocolError(ValueError):
    """A message that does not follow this format."""


# ---------------------------------------------------------------- data


def data_message(channel: int, data: bytes) -> bytes:
    """A terminal data message: ``channel`` (`STDIN`, `STDOUT` or `STDERR`) then ``data``."""
    if channel not in CHANNELS:
        raise ProtocolError(f"unknown channel {channel}")
    return bytes((channel,)) + data


def parse_data(message: bytes) -> tuple[int, bytes]:
    """(channel, bytes) of a terminal data message."""
    if not message:
        raise ProtocolError("an empty data message (it must start with its channel)")
    channel = message[0]
    if channel not in CHANNELS:
        raise ProtocolError(f"unknown channel {channel}")
    return channel, message[1:]


# ---------------------------------------------------------------- control


@dataclass(frozen=True)
class Control:
    """A control message; only the fields of its ``type`` are set."""

    type: str
    rows: int = 0
    cols: int = 0
    code: int | None = None
    message: str = ""


_TYPES = frozenset({"start", "resize", "eof", "exit", "error"})


def control(type_: str, **fields: Any) -> str:
    """The text of a control message, e.g. ``control("resize", rows=40, cols=120)``."""
    if type_ not in _TYPES:
        raise ProtocolError(f"unknown control message type {type_!r}")
    return json.dumps({"type": type_, **fields}, separators=(",", ":"))


def resize(rows: int, cols: int) -> str:
    return control("resize", rows=rows, cols=cols)


def exit_message(code: int) -> str:
    return control("exit", code=code)


def error_message(message: str) -> str:
    return control("error", message=message)


EOF = control("eof")


def parse_control(text: str) -> Control:
    """The `Control` of a text message; raises `ProtocolError` when it is not one.

    A ``start`` message is returned with its type only: read it with `TerminalStart`.
    """
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"a control message is not JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("type") not in _TYPES:
        raise ProtocolError("a control message needs a known 'type'")
    kind = body["type"]
    if kind == "resize":
        return Control(kind, rows=_size(body.get("rows")), cols=_size(body.get("cols")))
    if kind == "exit":
        code = body.get("code")
        if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
            raise ProtocolError("exit: code must be an integer or null")
        return Control(kind, code=code)
    if kind == "error":
        return Control(kind, message=str(body.get("message", "")))
    return Control(kind)


def _size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_TERMINAL_SIZE:
        return value
    raise ProtocolError(f"resize: rows and cols must be 1..{MAX_TERMINAL_SIZE}")


# ---------------------------------------------------------------- session set-up


class TerminalStart(BaseModel):
    """The first message of a terminal session, from the user: what to run and how.

    ``command`` None: an interactive shell (bash where there is one, else sh). ``tty``:
    run it on a pseudo-terminal of ``rows`` x ``cols`` (else plain pipes, stdout and
    stderr apart); ``term`` is the user's ``$TERM`` (the program's, on a terminal).
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["start"] = "start"
    command: list[str] | None = Field(default=None, min_length=1, max_length=4096)
    tty: bool = True
    rows: int = Field(default=DEFAULT_ROWS, ge=1, le=MAX_TERMINAL_SIZE)
    cols: int = Field(default=DEFAULT_COLS, ge=1, le=MAX_TERMINAL_SIZE)
    term: str = Field(default=DEFAULT_TERM, pattern=r"^[A-Za-z0-9._+-]{1,64}$")


class TunnelOffer(BaseModel):
    """A session the server asks an agent to serve: dial ``/agent/tunnels/{id}`` back.

    ``kind`` "terminal": run ``start`` in worker ``rank`` of job attempt ``attempt``;
    "port": connect to TCP ``port`` of that worker (127.0.0.1 on the node).
    """

    id: str
    kind: Literal["terminal", "port"]
    job_id: int
    attempt: int
    rank: int = 0
    user: str  # who opened it, for the agent's log
    start: TerminalStart | None = None
    port: int | None = Field(default=None, ge=1, le=MAX_PORT)


class TunnelPoll(BaseModel):
    """An agent's long poll for sessions to serve."""

    model_config = ConfigDict(extra="forbid")

    wait_seconds: float = Field(default=0, ge=0, le=60)


class TunnelOffers(BaseModel):
    tunnels: list[TunnelOffer]


def port_path(job_id: int, port: int) -> str:
    """Where the server serves port ``port`` of job ``job_id``: ``/jobs/42/ports/8888/``."""
    return f"/jobs/{job_id}/ports/{port}/"


def websocket_url(server: str, path: str) -> str:
    """``http(s)://host/...`` → ``ws(s)://host/...`` + ``path``."""
    if server.startswith("https://"):
        return "wss://" + server.removeprefix("https://").rstrip("/") + path
    return "ws://" + server.removeprefix("http://").rstrip("/") + path
