"""Interactive sessions on the agent's side (docs/interactive.md).

The agent keeps one more long poll open, ``POST /agent/tunnels``, beside its sync: the
server answers it at once when a user opens a terminal or a port stream in a job that
runs here. For each offer the agent dials a WebSocket back to the server
(``/agent/tunnels/{id}``, with its node token) and serves the session on it in a thread
of its own:

- a terminal: the program (`corral.agent.terminal`) as the job's account with the
  job's environment, or a ``docker exec`` in the job's container;
- a port stream: a TCP connection to 127.0.0.1:PORT on this node (container jobs use
  the host's network).

The agent serves only workers it supervises now, of the attempt the offer names; a
terminal of a job that ends is hung up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

from corral import __version__
from corral.agent import jobdirs
from corral.agent.jobdirs import JobKey
from corral.agent.retry import Backoff
from corral.agent.runtime.env import job_environment
from corral.agent.sync import DesiredState
from corral.agent.terminal import (
    DEFAULT_SHELL,
    ExecProgram,
    PipeProgram,
    Program,
    PtyProgram,
    StartFailed,
    pump,
)
from corral.agent.usermap import AccountError, JobAccount, UserMapper
from corral.client import API_PREFIX, ApiClient
from corral.core import tunnel as wire
from corral.core.errors import CorralError, NotFound, Unauthorized
from corral.core.schemas import Assignment
from corral.core.tunnel import TerminalStart, TunnelOffer, TunnelOffers, TunnelPoll

log = logging.getLogger(__name__)

POLL_WAIT_SECONDS = 25.0
MAX_SESSIONS = 64  # sessions served at once; more are refused with a message
_HTTP_SLACK_SECONDS = 15.0
_DIAL_TIMEOUT_SECONDS = 10.0
_CONNECT_TIMEOUT_SECONDS = 5.0


class SessionRefused(Exception):
    """This agent cannot serve the session; ``str(exc)`` says why, for the user."""


@dataclass(frozen=True)
class Worker:
    """A worker running here, as a session needs it."""

    assignment: Assignment
    job_dir: Path
    container: str | None  # None: a host process


class WorkerFinder:
    """Finds the worker an offer names among those supervised here: the desired state
    says what it is, the supervisor's sessions (host processes) or the Docker runtime's
    containers say that it runs now. Every source is safe to read from any thread."""

    def __init__(
        self,
        desired: DesiredState,
        state_dir: Path,
        *,
        sessions: Callable[[], Mapping[int, tuple[int, int]]],
        containers: Callable[[], Mapping[str, tuple[int, int]]] = dict,
    ) -> None:
        self._desired = desired
        self._state_dir = state_dir
        self._sessions = sessions
        self._containers = containers

    def find(self, job_id: int, attempt: int, rank: int) -> Worker:
        snapshot = self._desired.snapshot()
        assignments = snapshot[1] if snapshot is not None else ()
        for a in assignments:
            if (a.job_id, a.attempt, a.rank) == (job_id, attempt, rank) and not a.stop:
                break
        else:
            raise SessionRefused(
                f"attempt {attempt} of job {job_id} (worker {rank}) does not run on this node"
            )
        directory = jobdirs.job_dir(self._state_dir, JobKey(job_id, attempt, rank))
        if a.container is not None:
            container = self._container(job_id, rank)
            if container is None:
                raise SessionRefused(f"job {a.name}: its container is not running (yet)")
            return Worker(a, directory, container)
        if (job_id, rank) not in self._sessions().values():
            raise SessionRefused(f"job {a.name}: its process is not running (yet)")
        return Worker(a, directory, None)

    def _container(self, job_id: int, rank: int) -> str | None:
        for container, worker in self._containers().items():
            if worker == (job_id, rank):
                return container
        return None

    def alive(self, worker: Worker) -> bool:
        """Whether ``worker`` still runs here."""
        a = worker.assignment
        if worker.container is not None:
            return self._container(a.job_id, a.rank) == worker.container
        return (a.job_id, a.rank) in self._sessions().values()


class TunnelService:
    """The tunnel long poll (`run`, a thread body) and the sessions it starts.

    ``docker`` is the node's ``docker.DockerClient`` (None: no container jobs here);
    ``agent_env`` is what a job's environment copies PATH and LANG from."""

    def __init__(
        self,
        client: ApiClient,
        *,
        server: str,
        node_token: str,
        node_name: str,
        gpus_simulated: bool,
        finder: WorkerFinder,
        usermap: UserMapper,
        docker: Any = None,
        say: Callable[[str], None],
        agent_env: Mapping[str, str] | None = None,
        wait_seconds: float = POLL_WAIT_SECONDS,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.client = client
        self.server = server.rstrip("/")
        self._token = node_token
        self.node_name = node_name
        self.gpus_simulated = gpus_simulated
        self.finder = finder
        self.usermap = usermap
        self.docker = docker
        self._say = say
        self._agent_env = os.environ if agent_env is None else agent_env
        self.wait_seconds = wait_seconds
        self._new_backoff = backoff
        self._slots = threading.BoundedSemaphore(MAX_SESSIONS)
        self._lock = threading.Lock()
        self._programs: dict[int, tuple[int, int]] = {}  # session id → (job id, rank)

    def sessions(self) -> dict[int, tuple[int, int]]:
        """Host session id → (job id, rank) of the terminal programs running now, so
        that monitoring counts what they use as their job's."""
        with self._lock:
            return dict(self._programs)

    # ---------------------------------------------------------------- the long poll

    def run(self, stop: threading.Event) -> None:
        """Thread body: long-poll for offers until ``stop`` is set; serve each one."""
        backoff = self._new_backoff()
        said_missing = False
        while not stop.is_set():
            try:
                answer = self.client.exchange(
                    "POST",
                    "/agent/tunnels",
                    TunnelPoll(wait_seconds=self.wait_seconds),
                    TunnelOffers,
                    timeout=self.wait_seconds + _HTTP_SLACK_SECONDS,
                )
            except Unauthorized:
                return  # the sync threads say so, and stop the agent
            except NotFound:
                if not said_missing:
                    said_missing = True
                    self._say("the server offers no interactive sessions (an older version?)")
                stop.wait(300)
                continue
            except CorralError:
                stop.wait(backoff.delay())  # the sync threads say that the server is gone
                continue
            backoff.reset()
            for offer in answer.tunnels:
                threading.Thread(
                    target=self.serve,
                    args=(offer,),
                    name=f"corral-agent-session-{offer.id[:8]}",
                    daemon=True,
                ).start()

    # ---------------------------------------------------------------- one session

    def serve(self, offer: TunnelOffer) -> None:
        """Dial the session back and serve it (a thread body; never raises)."""
        try:
            ws = self.dial(offer.id)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            self._say(f"could not connect back to the server for a session ({exc})")
            return
        with ws:
            if not self._slots.acquire(blocking=False):
                _refuse(ws, f"node {self.node_name} serves {MAX_SESSIONS} sessions already")
                return
            try:
                self._serve(ws, offer)
            except ConnectionClosed:
                pass
            except Exception as exc:  # a bug must end this session, not the agent
                log.exception("session %s failed", offer.id)
                _refuse(ws, f"internal error in the agent: {exc!r}")
            finally:
                self._slots.release()

    def dial(self, tunnel_id: str) -> ClientConnection:
        url = wire.websocket_url(self.server, f"{API_PREFIX}/agent/tunnels/{tunnel_id}")
        return connect(
            url,
            additional_headers={"Authorization": f"Bearer {self._token}"},
            user_agent_header=f"corral-agent/{__version__}",
            open_timeout=_DIAL_TIMEOUT_SECONDS,
            compression=None,
            max_size=None,
        )

    def _serve(self, ws: ClientConnection, offer: TunnelOffer) -> None:
        try:
            worker = self.finder.find(offer.job_id, offer.attempt, offer.rank)
        except SessionRefused as exc:
            _refuse(ws, str(exc))
            return
        name = worker.assignment.name
        if offer.kind == "port":
            assert offer.port is not None
            serve_port(ws, offer.port, what=f"port {offer.port} of job {name}")
            return
        start = offer.start or TerminalStart()
        what = "a shell" if start.command is None else " ".join(start.command)[:200]
        self._say(f"job {name}: terminal opened by {offer.user}: {what}")
        try:
            program = self._start(worker, start)
        except (StartFailed, AccountError) as exc:
            ws.send(wire.data_message(wire.STDERR, f"corral: {exc}\r\n".encode()))
            ws.send(wire.exit_message(127))
            return
        if program.pid is not None:
            with self._lock:
                self._programs[program.pid] = (offer.job_id, offer.rank)
        try:
            serve_terminal(ws, program, job_alive=lambda: self.finder.alive(worker), job=name)
        finally:
            if program.pid is not None:
                with self._lock:
                    self._programs.pop(program.pid, None)
        self._say(f"job {name}: terminal of {offer.user} closed")

    def _start(self, worker: Worker, start: TerminalStart) -> Program:
        argv = start.command or DEFAULT_SHELL
        if worker.container is not None:
            if self.docker is None:
                raise StartFailed("this agent has no Docker connection for container jobs")
            return ExecProgram(
                self.docker,
                worker.container,
                argv,
                tty=start.tty,
                rows=start.rows,
                cols=start.cols,
                env={"TERM": start.term} if start.tty else {},
            )
        account = self.usermap.resolve(worker.assignment)
        env = job_environment(
            worker.assignment,
            account,
            node_name=self.node_name,
            gpus_simulated=self.gpus_simulated,
            agent_env=self._agent_env,
        )
        cwd = _workdir(worker, account)
        if not start.tty:
            return PipeProgram(argv, env=env, cwd=cwd, account=account)
        env["TERM"] = start.term
        return PtyProgram(argv, env=env, cwd=cwd, account=account, rows=start.rows, cols=start.cols)


def _workdir(worker: Worker, account: JobAccount) -> str:
    """The job's working directory if it has one, else its job directory."""
    workdir = worker.assignment.workdir
    if workdir and Path(workdir).is_dir():
        return workdir
    if worker.job_dir.is_dir():
        return str(worker.job_dir)
    return account.home if Path(account.home).is_dir() else "/"


def _refuse(ws: ClientConnection, message: str) -> None:
    with contextlib.suppress(ConnectionClosed, OSError):
        ws.send(wire.error_message(message))


# ---------------------------------------------------------------- terminals


def serve_terminal(
    ws: ClientConnection,
    program: Program,
    *,
    job_alive: Callable[[], bool] = lambda: True,
    job: str = "",
) -> None:
    """Serve one terminal session on ``ws`` until the program ends (its exit status is
    the last message) or the user goes (the program is hung up)."""
    lock = threading.Lock()  # one sender at a time: the output thread and this one

    def send(message: bytes | str) -> None:
        with lock:
            ws.send(message)

    def output() -> None:
        try:
            ran_out = pump(
                program, lambda ch, data: send(wire.data_message(ch, data)), job_alive=job_alive
            )
            code = program.wait()
            if not ran_out:
                note = f"\r\n[corral: job {job} ended; the terminal is closed]\r\n"
                send(wire.data_message(wire.STDERR, note.encode()))
            send(wire.exit_message(code) if code is not None else wire.EOF)
            ws.close()
        except (ConnectionClosed, OSError):
            program.hangup()  # the user has gone

    sender = threading.Thread(target=output, name="corral-terminal-output", daemon=True)
    sender.start()
    try:
        for message in ws:
            if isinstance(message, bytes):
                channel, data = wire.parse_data(message)
                if channel == wire.STDIN and data:
                    program.write(data)
                continue
            control = wire.parse_control(message)
            if control.type == "resize":
                program.resize(control.rows, control.cols)
            elif control.type == "eof":
                program.close_stdin()
    except (ConnectionClosed, wire.ProtocolError):
        pass
    finally:
        if program.poll() is None:
            program.hangup()
        sender.join(5)
        program.close()


# ---------------------------------------------------------------- port streams


def serve_port(ws: ClientConnection, port: int, *, what: str) -> None:
    """Serve one TCP connection to 127.0.0.1:``port`` on ``ws``."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=_CONNECT_TIMEOUT_SECONDS)
    except OSError as exc:
        reason = exc.strerror.lower() if exc.strerror else str(exc)
        _refuse(ws, f"{what}: cannot connect to 127.0.0.1:{port} on the node ({reason})")
        return
    sock.settimeout(None)
    done = {"job": False, "user": False}  # which sides have sent their end (EOF)
    lock = threading.Lock()

    def from_job() -> None:
        try:
            while data := sock.recv(wire.CHUNK_BYTES):
                ws.send(data)
            ws.send(wire.EOF)
        except (ConnectionClosed, OSError):
            return
        with lock:
            done["job"] = True
            both = done["user"]
        if both:
            ws.close()

    reader = threading.Thread(target=from_job, name="corral-port-stream", daemon=True)
    reader.start()
    try:
        for message in ws:
            if isinstance(message, bytes):
                sock.sendall(message)
                continue
            if wire.parse_control(message).type == "eof":
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                with lock:
                    done["user"] = True
                    both = done["job"]
                if both:
                    break
    except (ConnectionClosed, OSError, wire.ProtocolError):
        pass
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        reader.join(5)
