"""``corral sim scenario FILE``: run the real scheduler on a scenario file, offline.

No server is involved: the file describes the cluster, its projects and jobs
(docs/scheduler.md), and the command prints where every job ended up after the
scheduler's cycles — for what-if questions ("what if team-b had quota 4?") and for
checking the scheduler's behaviour. A bad file is reported as one ``error:`` line per
problem, each naming the field, with exit code 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import click

from corral.cli.output import OUTPUT_FORMATS, Column, print_data, print_table
from corral.scheduler import FairSharePolicy, FifoPolicy
from corral.scheduler.model import Placement, Policy
from corral.scheduler.scenario import ScenarioError, load_scenario
from corral.scheduler.sim import Event, JobOutcome, SimResult, run_simulation
from corral.scheduler.units import fmt_gpus

POLICIES: dict[str, Callable[[], Policy]] = {"fair-share": FairSharePolicy, "fifo": FifoPolicy}
PROJECT_COLUMNS = ("PROJECT", "QUOTA", "FAIR-SHARE", "ALLOCATED", "PENDING")
JOB_COLUMNS = (Column("JOB"), Column("STATE", styled=True), Column("NODE"), Column("GPUS"),
               Column("REASON"))  # fmt: skip


@click.group(
    epilog="""\b
Examples:
  corral sim scenario docs/examples/reference-scenario.yaml
  corral sim scenario what-if.yaml --cycles 1 -o json
"""
)
def sim() -> None:
    """Simulate the scheduler offline on scenario files.

    The file format is described in docs/scheduler.md.
    """


@sim.command("scenario")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option(
    "--cycles",
    type=click.IntRange(min=1),
    metavar="N",
    help="Scheduler cycles to run (default: the file's `cycles`, else 5).",
)
@click.option(
    "--policy",
    type=click.Choice(sorted(POLICIES)),
    default="fair-share",
    show_default=True,
    help="Scheduling policy: the server's fair-share scheduler, or plain first-come "
    "first-served (whole GPUs only, no quotas) to compare against.",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(OUTPUT_FORMATS, case_sensitive=False),
    default="table",
    show_default=True,
    help="Output format: tables for people, or JSON/YAML (docs/scheduler.md) for scripts.",
)
def scenario(file: Path, cycles: int | None, policy: str, output: str) -> None:
    """Run the scheduler on scenario FILE and show where every job ends up.

    Preempted jobs return to pending between cycles and may start again; the run stops
    early once a cycle changes nothing. The table shows each project's quota, fair
    share and GPUs in use, each job's node and GPUs (or why it waits), and what happened
    in each cycle.
    """
    try:
        loaded = load_scenario(file)
    except ScenarioError as exc:
        for line in exc.problems:
            click.echo(f"error: {line}", err=True)
        raise click.exceptions.Exit(1) from exc
    result = run_simulation(loaded, cycles=cycles, policy=POLICIES[policy]())
    if output != "table":
        print_data(result.to_json(), output)
        return
    print_result(result)


def print_result(result: SimResult) -> None:
    """The human rendering: projects, jobs, then the events of every cycle."""
    state = "stable" if result.converged else "not stable yet"
    cycles = f"{result.cycles_run} cycle{'s' if result.cycles_run != 1 else ''}"
    click.echo(f"After {cycles} ({state}):")
    click.echo()
    print_table(
        PROJECT_COLUMNS,
        [
            [
                name,
                fmt_gpus(share.quota),
                fmt_gpus(share.fair_share),
                fmt_gpus(share.allocated),
                str(share.pending),
            ]
            for name, share in result.projects.items()
        ],
    )
    click.echo()
    print_table(JOB_COLUMNS, [_job_row(name, job) for name, job in result.jobs.items()])
    click.echo()
    if not result.events:
        click.echo("Events: none (nothing started or stopped).")
        return
    click.echo("Events:")
    for line in event_lines(result.events):
        click.echo(f"  {line}")


def _job_row(name: str, job: JobOutcome) -> list[str]:
    if job.state == "pending":
        return [name, "pending", "-", "-", job.reason or "-"]
    return [name, "running", _nodes(job.placements), _gpus(job.placements), ""]


def _nodes(placements: Sequence[Placement]) -> str:
    return ",".join(dict.fromkeys(p.node for p in placements))


def _gpus(placements: Sequence[Placement]) -> str:
    """``0,1`` for one worker; ``node0:0-7 node1:0-7`` style per worker for gangs."""

    def one(p: Placement) -> str:
        ids = ",".join(str(g) for g in p.gpu_ids) or "-"
        return f"{ids} ({p.mig_slice})" if p.mig_slice else ids

    if len(placements) == 1:
        return one(placements[0])
    return " ".join(f"{p.node}:{one(p)}" for p in placements)


def event_lines(events: Sequence[Event]) -> list[str]:
    """One line per event: ``cycle 1  bound      a-1  node0 [0]``."""
    width = max((len(e.job) for e in events), default=0)
    lines = []
    for event in events:
        head = f"cycle {event.cycle}  {event.action:<9}  {event.job:<{width}}"
        if event.action == "bound":
            where = " ".join(f"{p.node} [{_gpus([p])}]" for p in event.placements)
            lines.append(f"{head}  {where}")
        else:
            lines.append(f"{head}  by {event.by}: {event.reason}")
    return lines


COMMANDS: Sequence[click.Command] = (sim,)
