"""The interactive commands: ``bash``, ``exec`` and ``port-forward``.

Each opens a WebSocket to the server with the user's API token; the server relays it
to the job's node agent (docs/interactive.md). On a terminal, the local terminal is put
in raw mode, so every key (Ctrl-C included) goes to the program in the job, and window
size changes follow; the command's exit status becomes this command's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import termios
import threading
import tty
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import click
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from corral import __version__
from corral.cli.config import CliState, pass_state
from corral.cli.jobs import resolve_project
from corral.cli.params import JOB_NAME, project_option
from corral.client import API_PREFIX, error_from_status
from corral.core import tunnel as wire
from corral.core.errors import CorralError, Unavailable
from corral.core.tunnel import TerminalStart

_RESOLVE_HELP = "Project of the job. Needed only when the name exists in several of your projects."
_OPEN_TIMEOUT_SECONDS = 30.0
NO_EXIT_STATUS = 255  # the session ended without the command's status (as ssh does)


def open_session(state: CliState, path: str) -> ClientConnection:
    """A WebSocket to ``/api/v1`` + ``path`` with the user's token. A refusal raises the
    `CorralError` the server answered with (`Forbidden`, `Conflict`, …)."""
    url = wire.websocket_url(state.server, API_PREFIX + path)
    headers = {"Authorization": f"Bearer {state.token}"} if state.token else {}
    try:
        return connect(
            url,
            additional_headers=headers,
            user_agent_header=f"corral/{__version__}",
            open_timeout=_OPEN_TIMEOUT_SECONDS,
            compression=None,
            max_size=None,
        )
    except InvalidStatus as exc:
        raise error_from_status(exc.response.status_code, bytes(exc.response.body or b"")) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise Unavailable(f"cannot reach the Corral server at {state.server} ({exc})") from None


# ---------------------------------------------------------------- terminals


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal ``fd`` in raw mode for the block (keys go through unchanged)."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal ``fd``, 24 x 80 when it has none or says 0 x 0
    (some terminals and pseudo-terminals never set a size; readline in a 1-column
    terminal shows no prompt and no echo)."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return wire.DEFAULT_ROWS, wire.DEFAULT_COLS
    if size.lines <= 0 or size.columns <= 0:
        return wire.DEFAULT_ROWS, wire.DEFAULT_COLS
    return size.lines, size.columns


def run_terminal(
    ws: ClientConnection,
    start: TerminalStart,
    *,
    stdin_fd: int,
    stdout: BinaryIO,
    stderr: BinaryIO,
) -> int:
    """Run one terminal session: send ``start``, copy stdin in and the output out until
    the command ends; its exit status (`NO_EXIT_STATUS` if none came)."""
    ws.send(start.model_dump_json())
    lock = threading.Lock()

    def send(message: bytes | str) -> None:
        with lock:
            ws.send(message)

    def forward_stdin() -> None:
        try:
            while data := os.read(stdin_fd, wire.CHUNK_BYTES):
                send(wire.data_message(wire.STDIN, data))
            send(wire.EOF)
        except (OSError, ConnectionClosed):
            return

    threading.Thread(target=forward_stdin, name="corral-stdin", daemon=True).start()
    resized = threading.Event()
    previous = None
    if start.tty and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGWINCH, lambda signum, frame: resized.set())
        threading.Thread(
            target=_follow_resizes, args=(resized, stdin_fd, send), daemon=True
        ).start()
    code = NO_EXIT_STATUS
    error = ""
    try:
        for message in ws:
            if isinstance(message, bytes):
                channel, data = wire.parse_data(message)
                out = stderr if channel == wire.STDERR else stdout
                out.write(data)
                out.flush()
                continue
            control = wire.parse_control(message)
            if control.type == "exit":
                code = control.code if control.code is not None else NO_EXIT_STATUS
            elif control.type == "error":
                error = control.message
    except ConnectionClosed:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
        resized.set()
    if error:
        raise CorralError(error)
    return code


def _follow_resizes(resized: threading.Event, fd: int, send: object) -> None:
    assert callable(send)
    while True:
        resized.wait()
        resized.clear()
        rows, cols = terminal_size(fd)
        try:
            send(wire.resize(rows, cols))
        except (ConnectionClosed, OSError):
            return


def _terminal(
    state: CliState,
    name: str,
    project: str | None,
    rank: int,
    command: Sequence[str] | None,
    use_tty: bool | None,
) -> int:
    stdin_fd = sys.stdin.fileno()
    if use_tty is None:
        use_tty = os.isatty(stdin_fd)
    if use_tty and not os.isatty(stdin_fd):
        raise click.UsageError("--tty needs a terminal on stdin")
    rows, cols = terminal_size(stdin_fd)
    start = TerminalStart(
        command=list(command) if command else None,
        tty=use_tty,
        rows=rows,
        cols=cols,
        term=_term(),
    )
    with state.client() as api:
        project = resolve_project(state, api, name, project)
    path = f"/jobs/{project}/{name}/terminal" + (f"?rank={rank}" if rank else "")
    ws = open_session(state, path)
    stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
    with ws, raw_terminal(stdin_fd) if use_tty else contextlib.nullcontext():
        return run_terminal(ws, start, stdin_fd=stdin_fd, stdout=stdout, stderr=stderr)


def _term() -> str:
    term = os.environ.get("TERM", "")
    valid = term and len(term) <= 64 and all(c.isalnum() or c in "._+-" for c in term)
    return term if valid else wire.DEFAULT_TERM


_tty_option = click.option(
    "-t/-T",
    "--tty/--no-tty",
    "use_tty",
    default=None,
    help="Run on a terminal (default: when stdin is one) or with plain pipes.",
)
_rank_option = click.option(
    "--rank",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Which worker of a gang to enter.",
)


@click.command()
@click.argument("name", type=JOB_NAME)
@project_option(_RESOLVE_HELP)
@_rank_option
@_tty_option
@pass_state
def bash(state: CliState, name: str, project: str | None, rank: int, use_tty: bool | None) -> None:
    """Open a shell in a running job.

    A shell (bash if the job has it, else sh) in job NAME's environment: on its node, as
    its Unix account, with its variables (CUDA_VISIBLE_DEVICES…) and in its working
    directory; in a container job, inside its container. Only the job's owner and
    admins may. Exit the shell (or Ctrl-D) to leave; the job keeps running.

    \b
    Examples:
      corral bash notebook
      corral submit dev --interactive -g 1 && corral bash dev
    """
    raise click.exceptions.Exit(_terminal(state, name, project, rank, None, use_tty))


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name", type=JOB_NAME)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@project_option(_RESOLVE_HELP)
@_rank_option
@_tty_option
@pass_state
def exec_(
    state: CliState,
    name: str,
    command: tuple[str, ...],
    project: str | None,
    rank: int,
    use_tty: bool | None,
) -> None:
    """Run a command in a running job; exit with its exit status.

    Like `corral bash`, but runs COMMAND. Put it after `--` so that its options are not
    read as Corral's.

    \b
    Examples:
      corral exec train-1 -- nvidia-smi
      corral exec train-1 -T -- tar c results > results.tar
    """
    raise click.exceptions.Exit(_terminal(state, name, project, rank, command, use_tty))


# ---------------------------------------------------------------- port-forward


def _ports(text: str) -> tuple[int, int]:
    local, _, remote = text.partition(":")
    try:
        ports = int(local), int(remote or local)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: give LOCAL:REMOTE or PORT, e.g. 8888:8888", param_hint="PORTS"
        ) from None
    if not (0 <= ports[0] <= wire.MAX_PORT and 1 <= ports[1] <= wire.MAX_PORT):
        raise click.BadParameter(f"{text!r}: ports are 1..65535 (LOCAL 0: any free port)")
    return ports


def forward_connection(conn: socket.socket, ws: ClientConnection) -> str | None:
    """Copy one local connection to and from its session until both ends are done; the
    session's error message, if it failed."""
    error: list[str] = []
    finished = threading.Event()

    def to_job() -> None:
        try:
            while data := conn.recv(wire.CHUNK_BYTES):
                ws.send(data)
            ws.send(wire.EOF)
        except (OSError, ConnectionClosed):
            finished.set()

    threading.Thread(target=to_job, name="corral-forward", daemon=True).start()
    try:
        for message in ws:
            if isinstance(message, bytes):
                conn.sendall(message)
                continue
            control = wire.parse_control(message)
            if control.type == "eof":
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_WR)
            elif control.type == "error":
                error.append(control.message)
    except (OSError, ConnectionClosed, wire.ProtocolError):
        pass
    finally:
        with contextlib.suppress(OSError):
            ws.close()
        conn.close()
    return error[0] if error else None


@click.command("port-forward")
@click.argument("name", type=JOB_NAME)
@click.argument("ports", metavar="[LOCAL:]REMOTE")
@project_option(_RESOLVE_HELP)
@_rank_option
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Local address to listen on.",
)
@pass_state
def port_forward(
    state: CliState, name: str, ports: str, project: str | None, rank: int, address: str
) -> None:
    """Forward a local port to a port of a running job.

    Listens on ADDRESS:LOCAL and forwards each connection, through the server, to
    127.0.0.1:REMOTE on the job's node (a container job shares its node's network).
    LOCAL 0 picks a free port. Only the job's owner and admins may. Ctrl-C stops.

    \b
    Examples:
      corral port-forward notebook 8888            # then open http://127.0.0.1:8888
      corral port-forward train-1 16006:6006       # TensorBoard on local port 16006
    """
    local, remote = _ports(ports)
    with state.client() as api:
        project = resolve_project(state, api, name, project)
    path = f"/jobs/{project}/{name}/ports/{remote}" + (f"?rank={rank}" if rank else "")
    # Check access and the job's state once, before listening.
    open_session(state, path + ("&" if "?" in path else "?") + "check=true").close()
    listener = socket.create_server((address, local))
    bound = listener.getsockname()[1]
    click.echo(f"Forwarding {address}:{bound} -> port {remote} of job {name} (Ctrl-C stops)")
    sys.stdout.flush()

    def serve(conn: socket.socket) -> None:
        try:
            ws = open_session(state, path)
        except CorralError as exc:
            click.echo(f"error: {exc}", err=True)
            conn.close()
            return
        failure = forward_connection(conn, ws)
        if failure:
            click.echo(f"error: {failure}", err=True)

    with listener:
        try:
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()
        except KeyboardInterrupt:
            raise click.exceptions.Exit(0) from None


COMMANDS = (bash, exec_, port_forward)
