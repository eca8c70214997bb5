"""The node agent: registers with the server, then keeps this node's jobs in line with
the desired state the server sends, until SIGTERM/SIGINT.

Threads (all daemons, all stopped by one event):

- watcher and reporter (`corral.agent.sync`): long-poll for desired state, send reports;
- supervisor (`corral.agent.supervisor`): start, stop and watch jobs;
- log shipper (`corral.agent.logship`): send job output;
- sampler and metrics shipper (`corral.agent.collector`): monitoring, every second;
  each sample also goes to the GPU memory watchdog (`corral.agent.gpushare`);
- disk-usage scanner (`corral.agent.diskusage`), at low priority, when paths are given.

Stopping the agent leaves its jobs running (each is in its own session); the next agent
run re-adopts them from their job directories.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from corral import __version__, paths
from corral.agent.attribution import DEFAULT_USER_PATTERN, Attributor
from corral.agent.collector import Sampler, Shipper
from corral.agent.config import AgentConfig
from corral.agent.diskusage import DiskUsageScanner
from corral.agent.gpus import GpuBackend, open_backend
from corral.agent.gpushare import ShareWatchdog
from corral.agent.hostmetrics import HostCollector
from corral.agent.inventory import host_inventory
from corral.agent.jobdirs import JobKey, describe
from corral.agent.logship import LogShipping
from corral.agent.mps import MpsError, NodeMps
from corral.agent.retry import Backoff, ConnectionStatus
from corral.agent.runtime import cgroups
from corral.agent.runtime import docker as docker_runtime
from corral.agent.runtime.base import JobHandle, Runtime, StartError
from corral.agent.runtime.process import ProcessRuntime
from corral.agent.runtime.routing import Runtimes
from corral.agent.supervisor import Supervisor
from corral.agent.sync import DesiredState, ReportQueue, Syncer
from corral.agent.tunnels import TunnelService, WorkerFinder
from corral.agent.usermap import UserMapper
from corral.client import ApiClient
from corral.core.errors import CorralError, InvalidRequest, Unauthorized, Unavailable
from corral.core.names import check_node_name, node_name_from_hostname
from corral.core.schemas import Assignment, JobReport, NodeInventory, RegisterResponse

log = logging.getLogger(__name__)

NODE_TOKEN_FILE = "node-token"  # noqa: S105 (a file name, not a secret)
_JOIN_SECONDS = 3.0  # how long shutdown waits for each thread to notice


class AgentError(Exception):
    """The agent cannot go on; ``str(exc)`` is one line for the operator."""


class Console:
    """Human progress lines, ``corral agent: ...``, one whole line at a time."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out  # None: sys.stderr as it is when a line is said
        self._lock = threading.Lock()

    def say(self, message: str) -> None:
        out = self.out or sys.stderr
        with self._lock:
            out.write(f"corral agent: {message}\n")
            out.flush()


class Agent:
    """One node agent. `run` is the whole life; tests drive `start` and `shutdown`.

    Everything with side effects outside the process can be injected: ``client`` (an
    `ApiClient`, e.g. over ``httpx.MockTransport``), ``gpus``, ``runtime``, ``out``
    (where progress lines go), ``backoff`` (retry pacing) and ``euid``.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        client: ApiClient | None = None,
        gpus: GpuBackend | None = None,
        runtime: Runtime | None = None,
        out: TextIO | None = None,
        backoff: Callable[[], Backoff] = Backoff,
        euid: int | None = None,
    ) -> None:
        self.config = config
        name = config.name or node_name_from_hostname(socket.gethostname())
        try:
            self.node_name = check_node_name(name, field="--name")
        except InvalidRequest as exc:
            raise AgentError(str(exc)) from None
        self.state_dir = config.state_dir or paths.agent_dir(self.node_name)
        self.console = Console(out)
        self.say = self.console.say
        self.client = client or ApiClient(config.server)
        self._owns_client = client is None
        self._gpus = gpus
        self._runtime = runtime
        self._docker: Any = None  # a docker.DockerClient once connected
        self._docker_engine: str | None = None
        self._cgroups = cgroups.disabled("not set up yet")
        self._new_backoff = backoff
        self.usermap = UserMapper(
            config.user_map,
            allow_root_jobs=config.allow_root_jobs,
            node_name=self.node_name,
            euid=euid,
        )
        self.status = ConnectionStatus(self.say)
        self.stop_event = threading.Event()
        self.fatal: str | None = None
        self.reports = ReportQueue()
        self.supervisor: Supervisor | None = None
        self.tunnels: TunnelService | None = None  # interactive sessions
        self.registration: RegisterResponse | None = None
        self._logs = LogShipping(
            self.client,
            flush_seconds=config.log_flush_seconds,
            say=self.say,
            backoff=backoff(),
        )
        self.desired = DesiredState(on_change=self._wake_supervisor)
        self._threads: list[threading.Thread] = []
        self.sampler: Sampler | None = None
        self.metrics: Shipper | None = None
        self._disk: DiskUsageScanner | None = None
        self.mps = NodeMps(None)

    @property
    def node_token_path(self) -> Path:
        return self.state_dir / NODE_TOKEN_FILE

    # ---------------------------------------------------------------- life

    def run(self) -> int:
        """Register, supervise until stopped; the process exit code (0, or 1 on error)."""
        try:
            started = self.start()
        except AgentError as exc:
            self.say(f"error: {exc}")
            self._close()
            return 1
        if started:
            while not self.stop_event.wait(0.5):
                pass
        self.shutdown()
        if self.fatal:
            self.say(f"error: {self.fatal}")
            return 1
        return 0

    def request_stop(self) -> None:
        """Ask the agent to stop (safe from a signal handler or another thread)."""
        self.stop_event.set()

    def start(self) -> bool:
        """Find GPUs, register (retrying while the server is unreachable), re-adopt jobs
        and start the threads. False when stopped before registration succeeded.
        Raises `AgentError` when the agent cannot run at all."""
        self.say(f"corral {__version__} on node {self.node_name}, state in {self.state_dir}")
        if self._gpus is None:
            try:
                self._gpus = open_backend(self.config.simulate_gpus, self.node_name)
            except ValueError as exc:
                raise AgentError(str(exc)) from None
        gpus = self._gpus.inventory()
        self.say(f"GPUs ({gpus.backend}): {gpus.message}")
        self.say(self.usermap.describe())
        if self._runtime is None:
            on = self.config.cgroups
            self._cgroups = cgroups.detect() if on else cgroups.disabled("off: --no-cgroups")
            self.say(self._cgroups.describe())
        engine = self._connect_docker()
        # Private: it holds the node token and, below jobs/, every job's output.
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        registration = self._register(
            host_inventory(
                self.node_name,
                gpus,
                runs_jobs_as=self.usermap.runs_jobs_as,
                pool=self.config.pool,
                address=self.config.address,
                container_engine=engine,
            )
        )
        if registration is None:
            return False
        self.registration = registration
        try:
            self.mps = NodeMps.open(
                self.config.mps,
                self.config.mps_directory,
                state_dir=self.state_dir,
                gpus=gpus.devices,
                euid=self.usermap.euid,
                say=self.say,
            )
        except MpsError as exc:
            raise AgentError(str(exc)) from None
        runtime = self._runtime or self._default_runtime(registration.node, gpus.simulated)
        self._runtime = runtime
        self.supervisor = Supervisor(
            runtime=runtime,
            usermap=self.usermap,
            desired=self.desired,
            reports=self.reports,
            logs=self._logs,
            state_dir=self.state_dir,
            say=self.say,
        )
        self.supervisor.recover()
        syncer = Syncer(
            self.client,
            self.desired,
            self.reports,
            self.status,
            wait_seconds=registration.sync_wait_seconds,
            say=self.say,
            on_fatal=self._fail,
            backoff=self._new_backoff,
        )
        threads: list[tuple[str, Callable[[threading.Event], None]]] = [
            ("supervisor", self.supervisor.run),
            ("logs", self._logs.run),
            ("reporter", syncer.report),
            ("watcher", syncer.watch),
        ]
        self.tunnels = self._tunnel_service(registration, gpus.simulated)
        threads.append(("tunnels", self.tunnels.run))
        threads += self._monitoring(self._gpus)
        for name, body in threads:
            thread = threading.Thread(
                target=self._guarded, args=(name, body), name=f"corral-agent-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return True

    def _connect_docker(self) -> str | None:
        """Connect to the node's Docker engine (unless told not to); the engine's
        description for the inventory, None when container jobs cannot run here."""
        if self._docker is not None or not self.config.docker:
            if not self.config.docker:
                self.say("container jobs: off (--no-docker); they are not placed on this node")
            return self._docker_engine
        try:
            client, engine = docker_runtime.connect(self.config.docker_host)
        except StartError as exc:
            self.say(f"container jobs: not on this node ({exc})")
            return None
        self._docker, self._docker_engine = client, engine
        where = self.config.docker_host or "$DOCKER_HOST or the default socket"
        self.say(f"container jobs: {engine} ({where})")
        return engine

    def _default_runtime(self, node: str, gpus_simulated: bool) -> Runtime:
        process = ProcessRuntime(
            self.state_dir,
            node_name=node,
            gpus_simulated=gpus_simulated,
            on_exit=self._wake_supervisor,
            cgroups=self._cgroups,
            mps=self.mps.settings,
        )
        docker = None
        if self._docker is not None:
            docker = docker_runtime.DockerRuntime(
                self._docker,
                self.state_dir,
                node_name=node,
                gpus_simulated=gpus_simulated,
                gpu_requests=_gpu_requests(self.config.docker_gpu_requests),
                mps=self.mps.settings,
                on_exit=self._wake_supervisor,
            )
        return Runtimes(process, docker)

    def _tunnel_service(self, registration: RegisterResponse, simulated: bool) -> TunnelService:
        """Interactive sessions (terminals, port streams) in the jobs running here."""
        supervisor = self.supervisor
        assert supervisor is not None
        containers = getattr(self._runtime, "containers", None)
        return TunnelService(
            self.client,
            server=self.config.server,
            node_token=registration.node_token,
            node_name=registration.node,
            gpus_simulated=simulated,
            finder=WorkerFinder(
                self.desired,
                self.state_dir,
                sessions=supervisor.sessions,
                containers=containers if callable(containers) else dict,
            ),
            usermap=self.usermap,
            docker=self._docker,
            say=self.say,
            backoff=self._new_backoff,
        )

    def _job_sessions(self) -> dict[int, tuple[int, int]]:
        """Session id -> (job id, rank): the jobs' own, and their terminals' (what a
        terminal runs counts as its job's in monitoring)."""
        assert self.supervisor is not None
        sessions = dict(self.supervisor.sessions())
        if self.tunnels is not None:
            sessions.update(self.tunnels.sessions())
        return sessions

    def _monitoring(self, gpus: GpuBackend) -> list[tuple[str, Callable[[threading.Event], None]]]:
        """The monitoring threads (none when ``metrics_interval`` is 0)."""
        config = self.config
        if config.metrics_interval <= 0:
            self.say("monitoring is off (--metrics-interval 0)")
            return []
        supervisor = self.supervisor
        assert supervisor is not None
        self._disk = (
            DiskUsageScanner(config.disk_usage_paths, period=config.disk_usage_period)
            if config.disk_usage_paths
            else None
        )
        if self._disk is not None:
            self._disk.start()
        self.sampler = Sampler(
            gpus,
            sessions=self._job_sessions,
            host=HostCollector(),
            attributor=Attributor(
                user_pattern=config.container_user_pattern or DEFAULT_USER_PATTERN
            ),
            interval=config.metrics_interval,
            on_sample=self._gpu_share_watchdog(supervisor).check,
        )
        self.metrics = Shipper(
            self.client,
            self.sampler,
            disk=self._disk,
            push_seconds=config.metrics_push,
            backoff=self._new_backoff(),
            say=self.say,
        )
        return [("sampler", self.sampler.run), ("metrics", self.metrics.run)]

    def shutdown(self) -> list[JobHandle]:
        """Stop the threads, leave the jobs running; returns (and says) what is left."""
        self.stop_event.set()
        self._wake_supervisor()
        self._logs.wake()
        if self._disk is not None:
            self._disk.stop()
        # The watcher may sit in a long poll: it is a daemon and is not waited for.
        for thread in self._threads:
            if thread.name not in ("corral-agent-watcher", "corral-agent-tunnels"):
                thread.join(_JOIN_SECONDS)
        close = getattr(self._runtime, "close", None)
        if callable(close):
            close()
        left = self.supervisor.running() if self.supervisor else []
        if left:
            jobs = ", ".join(f"{describe(h.key)} (pid {h.pid})" for h in left)
            self.say(f"stopped; left {len(left)} job(s) running, to re-adopt on restart: {jobs}")
        else:
            self.say("stopped")
        note = self.mps.close(len(left))
        if note:
            self.say(note)
        self._close()
        return left

    def _gpu_share_watchdog(self, supervisor: Supervisor) -> ShareWatchdog:
        """Holds jobs on shared GPUs to their memory share (`corral.agent.gpushare`):
        notices go to the server as job reports, stops to the supervisor."""

        def assignments() -> tuple[Assignment, ...]:
            snapshot = self.desired.snapshot()
            return snapshot[1] if snapshot is not None else ()

        def notify(key: JobKey, message: str) -> None:
            self.reports.put(
                JobReport(
                    job_id=key.job_id,
                    attempt=key.attempt,
                    rank=key.rank,
                    state="notice",
                    message=message,
                    at=datetime.now(UTC),
                )
            )

        return ShareWatchdog(
            assignments=assignments, notify=notify, stop=supervisor.request_stop, say=self.say
        )

    # ---------------------------------------------------------------- registration

    def _register(self, inventory: NodeInventory) -> RegisterResponse | None:
        """POST /agent/register with the join token, else the stored node token (the
        server accepts a node's own token there); None if stopped meanwhile."""
        tokens = self._tokens()
        backoff = self._new_backoff()
        body = inventory.model_dump(mode="json")
        while not self.stop_event.is_set():
            kind, token = tokens[0]
            self.client.set_token(token)
            try:
                answer = self.client.request("POST", "/agent/register", json=body)
            except Unauthorized:
                tokens.pop(0)
                if not tokens:
                    raise AgentError(_refused(kind, self.config.server)) from None
                self.say(f"{_refused(kind, self.config.server)}; trying the stored node token")
                continue
            except Unavailable as exc:
                self.status.lost(str(exc))
                self.stop_event.wait(backoff.delay())
                continue
            except CorralError as exc:
                if type(exc) is not CorralError:  # a definite refusal (4xx), not a hiccup
                    raise AgentError(f"the server refused to register this node: {exc}") from None
                self.say(f"server error while registering ({exc}); retrying")
                self.stop_event.wait(backoff.delay())
                continue
            registration = RegisterResponse.model_validate(answer)
            paths.write_secret(self.node_token_path, registration.node_token)
            self.client.set_token(registration.node_token)
            self.status.ok()
            self.say(f"registered as node {registration.node} with {self.config.server}")
            return registration
        return None

    def _tokens(self) -> list[tuple[str, str]]:
        tokens = []
        if self.config.join_token:
            tokens.append(("join token", self.config.join_token))
        try:
            stored = self.node_token_path.read_text().strip()
        except OSError:
            stored = ""
        if stored:
            tokens.append(("node token", stored))
        if not tokens:
            raise AgentError(
                f"no join token given and no node token in {self.node_token_path}: start "
                "the agent with --join-token TOKEN (an admin can make one)"
            )
        return tokens

    # ---------------------------------------------------------------- helpers

    def _guarded(self, name: str, body: Callable[[threading.Event], None]) -> None:
        """Run a thread body; a crash stops the agent (exit 1) rather than leaving it
        half-alive, and errors caused by shutting down are not errors."""
        try:
            body(self.stop_event)
        except Exception as exc:
            if not self.stop_event.is_set():
                log.exception("the %s thread failed", name)
                self._fail(f"internal error in the agent's {name} thread: {exc!r}")

    def _fail(self, message: str) -> None:
        self.fatal = message
        self.stop_event.set()

    def _wake_supervisor(self) -> None:
        if self.supervisor is not None:
            self.supervisor.wake.set()

    def _close(self) -> None:
        if self._owns_client:
            self.client.close()
        if self._gpus is not None:
            self._gpus.close()
        if self._docker is not None:
            with contextlib.suppress(Exception):
                self._docker.close()


def _gpu_requests(value: str) -> docker_runtime.GpuRequests:
    if value not in ("auto", "always", "never"):
        raise AgentError(f"--docker-gpu-requests must be auto, always or never, not {value!r}")
    return value  # type: ignore[return-value]


def _refused(kind: str, server: str) -> str:
    if kind == "join token":
        return (
            f"the server at {server} refused the join token (expired, revoked or mistyped?): "
            "ask an admin for a new one"
        )
    return (
        f"the server at {server} refused this node's stored token (was the node removed?): "
        "start the agent with --join-token TOKEN"
    )


def run_agent(config: AgentConfig) -> int:
    """Run the agent in the foreground until SIGTERM/SIGINT; the process exit code.

    Stopping leaves the node's jobs running; they are re-adopted at the next start.
    """
    try:
        agent = Agent(config)
    except AgentError as exc:
        Console().say(f"error: {exc}")
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        agent.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return agent.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
