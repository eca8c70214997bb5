"""``corral demo``: a simulated three-node cluster with a multi-team workload.

The same steps as ``corral up`` (see `corral.cli.up`), with a throw-away directory,
three agents with simulated GPUs, and the workload of `corral.cli.demo_workload`.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Sequence

import click

from corral.cli.config import CliState, pass_state
from corral.cli.daemons import DATABASE_URL_ENV
from corral.cli.demo_workload import JOBS, run_workload
from corral.cli.job_views import print_jobs
from corral.cli.local import ProcessGroup
from corral.cli.output import parse
from corral.cli.up import (
    LocalServer,
    active_jobs,
    check_port_free,
    child_env,
    jobs_phrase,
    log_cli_in,
    run_in_foreground,
    start_agent,
    start_server,
    wait_for_nodes,
    warn_if_root,
)
from corral.client import ApiClient
from corral.core.errors import CorralError
from corral.core.schemas import JobList
from corral.core.states import JobState
from corral.paths import DEFAULT_PORT, corral_home

DEMO_NODES = (
    ("demo-node-1", "8xA100-80GB"),
    ("demo-node-2", "8xA100-80GB"),
    ("demo-node-3", "4xRTX4090"),
)


@click.command(
    epilog="""\b
Examples:
  corral demo                # then, in another terminal: corral list
  corral demo --port 9000
"""
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port of the demo server (on 127.0.0.1).",
)
@pass_state
def demo(state: CliState, port: int) -> None:
    """Run a demo cluster with simulated GPUs and a workload.

    Starts a server and three agents (2 nodes with 8 A100s, 1 with 4 RTX 4090s, all
    simulated), creates projects team-a/b/c and users alice and bob, and submits
    fifteen jobs — some run, some wait, one fails. The jobs are real processes on this
    machine. Everything lives in $CORRAL_HOME/demo, which is wiped at every start.
    """
    check_port_free(port)
    warn_if_root()
    demo_dir = corral_home() / "demo"
    try:
        if demo_dir.exists():
            shutil.rmtree(demo_dir)
    except OSError as exc:
        raise CorralError(f"cannot wipe the old demo in {demo_dir}: {exc}") from exc
    log_dir = demo_dir / "logs"
    with ProcessGroup() as group:
        server = start_server(
            group,
            port=port,
            data_dir=demo_dir / "server",
            log_dir=log_dir,
            # A throw-away demo must never touch a real database named in the environment.
            env=child_env(drop=[DATABASE_URL_ENV]),
        )
        log_cli_in(state, server)
        for name, profile in DEMO_NODES:
            start_agent(
                group,
                server,
                name=name,
                log_dir=log_dir,
                simulate_gpus=profile,
                state_dir=demo_dir / "agents" / name,
            )
        wait_for_nodes(state, group, server, [name for name, _ in DEMO_NODES])
        with state.client(server=server.url, token=server.admin_token) as admin:
            token_files = run_workload(
                admin,
                lambda token: state.client(server=server.url, token=token),
                token_dir=demo_dir,
                echo=click.echo,
            )
            _show_first_placements(state, admin)
        alice = token_files["alice"]
        click.echo(
            f"""
Corral demo is running at {server.url} (logs in {log_dir}).
The GPUs are SIMULATED: 2 nodes x 8 A100-80GB and 1 node x 4 RTX4090; the jobs are
real processes on this machine.
{server.dashboard_hint()} To see what the researcher alice
  sees, log out and log in with hers (cat {alice}).
Try:
  corral nodes                        # the nodes and their (simulated) GPUs
  corral list                         # every job; REASON says why one waits
  corral get gpt-pretrain             # a job waiting for a whole node, and its events
  corral get ddp-2x2                  # a gang: where each worker runs
  corral logs ddp-2x2 --rank 1        # the second worker's output
  corral logs -f llama-finetune       # follow a job's output (Ctrl-C to stop)
  corral project list
  CORRAL_TOKEN=$(cat {alice}) corral list          # what alice sees
  CORRAL_TOKEN=$(cat {alice}) corral submit my-job -p team-a -g 1 -- sh -c 'echo hi; sleep 30'
Press Ctrl-C to stop the demo."""
        )
        try:
            run_in_foreground(group)
        finally:
            stop_jobs(state, server)
    click.echo("Stopped.", err=True)


def _show_first_placements(state: CliState, admin: ApiClient) -> None:
    """Print the job table once the scheduler has placed most jobs (or after 15 s)."""
    deadline = time.monotonic() + 15
    while True:
        jobs = parse(JobList, admin.get("/jobs")).jobs
        placed = sum(job.state is not JobState.PENDING for job in jobs)
        if placed >= len(JOBS) // 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    click.echo()
    print_jobs(jobs, state.clock())


def stop_jobs(state: CliState, server: LocalServer) -> None:
    """Delete every active job and wait (bounded) until they have ended.

    Agents leave their jobs running when they stop (they re-adopt them at the next
    start). The demo's jobs must not outlive the demo, whose directory is wiped at the
    next start, so they are stopped through the API while the agents still run.
    """
    jobs = active_jobs(state, server)
    if not jobs:
        return
    click.echo(f"Stopping the demo's {jobs_phrase(len(jobs))} ...", err=True)
    deadline = time.monotonic() + max(job.grace_seconds for job in jobs) + 10
    with state.client(server=server.url, token=server.admin_token) as api:
        for job in jobs:
            with contextlib.suppress(CorralError):
                api.delete(f"/jobs/{job.project}/{job.name}")
    while active_jobs(state, server) and time.monotonic() < deadline:
        time.sleep(0.5)


COMMANDS: Sequence[click.Command] = (demo,)
