"""``corral up``: a whole cluster on this machine, in the foreground.

``corral up`` (and ``corral demo``, built from the same steps in `corral.cli.demo`)
start ``corral server`` and ``corral agent`` as child processes (see
`corral.cli.local.ProcessGroup`), log the CLI in to the new server as its admin, and stop
every child on Ctrl-C or SIGTERM — or when one of them dies, since half a cluster would
only mislead.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from corral.cli.config import (
    DEFAULT_PROJECT,
    SERVER_ENV,
    TOKEN_ENV,
    CliConfig,
    CliState,
    pass_state,
)
from corral.cli.daemons import JOIN_TOKEN_ENV
from corral.cli.local import Child, ProcessGroup, port_in_use, wait_for_file, wait_until_healthy
from corral.cli.nodes import gpu_models
from corral.cli.output import parse
from corral.core.errors import CorralError
from corral.core.names import node_name_from_hostname
from corral.core.schemas import JobList, JobOut, NodeList, NodeOut
from corral.core.states import NodeState
from corral.paths import DEFAULT_PORT, corral_home, server_dir

HOST = "127.0.0.1"
SERVER_START_SECONDS = 60.0  # the first start creates the database
NODES_JOIN_SECONDS = 60.0


@dataclass(frozen=True)
class LocalServer:
    """A `corral server` child that answers, and the tokens it wrote on its first start."""

    url: str
    data_dir: Path
    admin_token: str
    join_token: str

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin-token"

    def dashboard_hint(self) -> str:
        """Where the web dashboard is and what to log in with."""
        return (
            f"Dashboard: open {self.url}/ in a browser and log in with the admin token\n"
            f"  (cat {self.admin_token_file})."
        )


def child_env(*, drop: Sequence[str] = (), extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child, less ``drop``, plus ``extra``."""
    # The CLI's own overrides must not leak into the children, nor one child's secret
    # into another (the join token goes to agents only).
    env = {k: v for k, v in os.environ.items() if k not in (SERVER_ENV, TOKEN_ENV, *drop)}
    env.pop(JOIN_TOKEN_ENV, None)
    env.update(extra or {})
    return env


def _corral(*args: str) -> list[str]:
    """The argv that runs this very Corral installation's CLI."""
    return [sys.executable, "-m", "corral", *args]


def check_port_free(port: int) -> None:
    if port_in_use(HOST, port):
        raise CorralError(
            f"port {port} on {HOST} is already in use (by another `corral up` or "
            "`corral demo`?): stop that, or choose another port with --port"
        )


def start_server(
    group: ProcessGroup, *, port: int, data_dir: Path, log_dir: Path, env: dict[str, str]
) -> LocalServer:
    """Start `corral server`, wait until it answers, and read the tokens it wrote."""
    url = f"http://{HOST}:{port}"
    click.echo(f"Starting the Corral server at {url} ...")
    child = group.start(
        "the server",
        _corral("server", "--host", HOST, "--port", str(port), "--data-dir", str(data_dir)),
        log_path=log_dir / "server.log",
        env=env,
        tier=0,
    )
    wait_until_healthy(url, timeout_seconds=SERVER_START_SECONDS, child=child)
    return LocalServer(
        url=url,
        data_dir=data_dir,
        admin_token=wait_for_file(data_dir / "admin-token", timeout_seconds=10),
        join_token=wait_for_file(data_dir / "join-token", timeout_seconds=10),
    )


def start_agent(
    group: ProcessGroup,
    server: LocalServer,
    *,
    name: str,
    log_dir: Path,
    simulate_gpus: str | None = None,
    state_dir: Path | None = None,
) -> Child:
    args = ["agent", "--server", server.url, "--name", name]
    if simulate_gpus:
        args += ["--simulate-gpus", simulate_gpus]
    if state_dir:
        args += ["--state-dir", str(state_dir)]
    if os.geteuid() == 0:
        args += ["--user-map", "*=root", "--allow-root-jobs"]
    # The join token travels in the environment, not argv, where `ps` would show it
    # to every user of the machine.
    return group.start(
        f"the agent {name}",
        _corral(*args),
        log_path=log_dir / f"agent-{name}.log",
        env=child_env(extra={JOIN_TOKEN_ENV: server.join_token}),
        tier=1,
    )


def warn_if_root() -> None:
    if os.geteuid() == 0:
        click.echo(
            "warning: running as root, so jobs run as root: acceptable in this local "
            "single-machine mode only (a real `corral agent` never runs jobs as root by "
            "default).",
            err=True,
        )


def log_cli_in(state: CliState, server: LocalServer) -> None:
    path = state.save_config(
        CliConfig(server=server.url, token=server.admin_token, project=DEFAULT_PROJECT)
    )
    click.echo(f"The CLI is logged in to it as admin (saved in {path}).")
    overridden = [f"${var}" for var in (SERVER_ENV, TOKEN_ENV) if os.environ.get(var)]
    if overridden:
        click.echo(
            f"note: {' and '.join(overridden)} set in your environment override that: "
            f"unset {' '.join(v[1:] for v in overridden)} to use this cluster.",
            err=True,
        )


def wait_for_nodes(
    state: CliState, group: ProcessGroup, server: LocalServer, names: Sequence[str]
) -> dict[str, NodeOut]:
    """Report each node as it becomes ready; warn (not fail) for those that do not.

    Returns the nodes that became ready. Fails at once if one of the children dies
    meanwhile (an agent that cannot start, say), with the end of its log.
    """
    ready: dict[str, NodeOut] = {}
    waiting = set(names)
    deadline = time.monotonic() + NODES_JOIN_SECONDS
    with state.client(server=server.url, token=server.admin_token) as api:
        while waiting and time.monotonic() < deadline:
            dead = group.exited()
            if dead is not None:
                raise CorralError(dead.describe_exit())
            for node in parse(NodeList, api.get("/nodes")).nodes:
                if node.name in waiting and node.state is NodeState.READY:
                    waiting.discard(node.name)
                    ready[node.name] = node
                    gpus = f"{node.gpus} GPUs, {gpu_models(node)}" if node.gpus else "no GPUs"
                    click.echo(f"Node {node.name} is ready: {gpus}.")
            time.sleep(0.5)
    for name in sorted(waiting):
        click.echo(f"warning: node {name} has not joined yet; see its log.", err=True)
    return ready


def run_in_foreground(group: ProcessGroup) -> None:
    dead = group.supervise()
    if dead is not None:
        raise CorralError(f"{dead.describe_exit()}\nStopping the other processes.")
    click.echo("\nStopping ...", err=True)


def jobs_phrase(count: int) -> str:
    """``1 job``, ``3 jobs``."""
    return f"{count} job" if count == 1 else f"{count} jobs"


def active_jobs(state: CliState, server: LocalServer) -> list[JobOut]:
    """The jobs that still run or wait; [] when the server cannot tell (best effort)."""
    try:
        with state.client(server=server.url, token=server.admin_token) as api:
            jobs = parse(JobList, api.get("/jobs")).jobs
    except CorralError:
        return []
    return [job for job in jobs if not job.state.is_terminal]


@click.command(
    epilog="""\b
Examples:
  corral up                                  # this machine's real GPUs, through NVML
  corral up --simulate-gpus 4xA100-80GB      # no GPUs here: pretend to have four
  corral up --port 9000
"""
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port of the server (on 127.0.0.1).",
)
@click.option(
    "--simulate-gpus",
    metavar="PROFILE",
    help="Give the local node simulated GPUs, e.g. 8xA100-80GB (for machines without any).",
)
@pass_state
def up(state: CliState, port: int, simulate_gpus: str | None) -> None:
    """Run a server and an agent on this machine.

    The simplest complete setup: this machine is the whole cluster, state is kept in
    SQLite under $CORRAL_HOME/server, and the CLI is logged in as admin. Jobs run as
    your own account. Both run in the foreground until Ctrl-C.
    """
    check_port_free(port)
    warn_if_root()
    log_dir = corral_home() / "logs"
    with ProcessGroup() as group:
        server = start_server(
            group, port=port, data_dir=server_dir(), log_dir=log_dir, env=child_env()
        )
        log_cli_in(state, server)
        name = node_name_from_hostname(socket.gethostname())
        start_agent(group, server, name=name, log_dir=log_dir, simulate_gpus=simulate_gpus)
        ready = wait_for_nodes(state, group, server, [name])
        if name in ready and ready[name].gpus == 0 and not simulate_gpus:
            click.echo(
                "No GPU was found here, so only CPU jobs can run; "
                "`corral up --simulate-gpus 4xA100-80GB` pretends to have four."
            )
        click.echo(
            f"""
Corral is running at {server.url} (logs in {log_dir}).
{server.dashboard_hint()}
Try:
  corral nodes
  corral submit hello -g 0 -- sh -c 'echo hello from $(uname -n)'
  corral list
  corral logs hello
Press Ctrl-C to stop the server and the agent."""
        )
        try:
            run_in_foreground(group)
        finally:
            still = active_jobs(state, server)
            if still:
                click.echo(
                    f"note: {jobs_phrase(len(still))} keep running or waiting; the agent "
                    "takes them up again at the next `corral up` (or: `corral delete`).",
                    err=True,
                )
    click.echo("Stopped.", err=True)


COMMANDS: Sequence[click.Command] = (up,)
