"""Human views of jobs: the `corral list` table and the `corral get` block.

Pure functions of the API objects and "now", so tests can render with a fixed clock.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from datetime import datetime

import click

from corral.cli.output import (
    Column,
    age,
    number,
    print_fields,
    print_table,
    time_and_age,
)
from corral.core.jobview import container_fields, gpus_text, run_time_text
from corral.core.quantities import format_bytes, format_duration
from corral.core.schemas import JobDetail, JobOut
from corral.core.states import JobState
from corral.core.tunnel import port_path

# States whose reason is worth a column in the list: why it waits, why it failed.
_REASON_STATES = frozenset({JobState.PENDING, JobState.FAILED, JobState.LOST})

JOB_COLUMNS = (
    Column("NAME"),
    Column("PROJECT"),
    Column("USER"),
    Column("KIND"),
    Column("STATE", styled=True),
    Column("NODE"),
    Column("GPUS"),
    Column("AGE"),
    Column("REASON"),
)


def gpus_cell(job: JobOut) -> str:
    """What the job asks for, then (once bound) which GPUs it got (`corral.core.jobview`;
    `corral get` lists where each worker of a gang runs)."""
    return gpus_text(job, job.gpu_ids)


def node_cell(job: JobOut) -> str:
    """The node, or for a gang its first worker's node and how many more it spans."""
    if job.node is None:
        return "-"
    others = {w.node for w in job.worker_list if w.node and w.node != job.node}
    return f"{job.node} +{len(others)}" if others else job.node


def job_row(job: JobOut, now: datetime) -> list[str]:
    reason = job.reason if job.state in _REASON_STATES and job.reason else ""
    return [
        job.name,
        job.project,
        job.user,
        job.kind.value,
        job.state.value + (" (deleted)" if job.deleted else ""),
        node_cell(job),
        gpus_cell(job),
        age(job.created_at, now),
        reason,
    ]


def print_jobs(jobs: Sequence[JobOut], now: datetime) -> None:
    """The `corral list` table; a PORTS column when a job exposes ports (--port)."""
    if not any(job.ports for job in jobs):
        print_table(JOB_COLUMNS, [job_row(job, now) for job in jobs])
        return
    print_table(
        (*JOB_COLUMNS[:-1], Column("PORTS"), JOB_COLUMNS[-1]),
        [
            [*row[:-1], ",".join(map(str, job.ports)) or "-", row[-1]]
            for job, row in ((job, job_row(job, now)) for job in jobs)
        ],
    )


def run_time(job: JobOut, now: datetime) -> str:
    """How long the job has run: until it finished, or until now while it runs."""
    return run_time_text(job.started_at, job.finished_at, job.state.is_terminal, now)


def ports_text(job: JobOut, server: str) -> str:
    """One line per exposed port: ``8888  http://server/jobs/42/ports/8888/``."""
    return "\n".join(f"{port}  {server}{port_path(job.id, port)}" for port in job.ports)


def print_job(job: JobDetail, now: datetime, server: str = "") -> None:
    """The `corral get` view: every field people ask about, then the job's events.
    ``server`` is the server's URL, which a job's port URLs begin with."""
    gpus = gpus_cell(job)
    fields = [
        ("Name", job.name),
        ("Project", job.project),
        ("User", job.user),
        ("Kind", job.kind.value),
        ("State", job.state.value + (" (deleted)" if job.deleted else "")),
        ("Reason", job.reason or "-"),
        ("Node", node_cell(job)),
        ("GPUs", gpus if job.node or gpus == "0" else f"{gpus} (not bound yet)"),
        ("GPU UUIDs", "\n".join(job.gpu_uuids) or "-"),
        ("CPUs", number(job.cpus)),
        ("Memory", format_bytes(job.memory_bytes)),
        ("Command", shlex.join(job.command) or "(the image's own command)"),
        *container_fields(job.container),
        *([("Ports", ports_text(job, server))] if job.ports else []),
        ("Workdir", job.workdir or "-"),
        # Names only: values are often secrets, and this view ends up in screenshots.
        ("Env", ", ".join(sorted(job.env)) + " (values: -o yaml)" if job.env else "-"),
        ("Created", time_and_age(job.created_at, now)),
        ("Started", time_and_age(job.started_at, now)),
        ("Finished", time_and_age(job.finished_at, now)),
        ("Run time", run_time(job, now)),
        ("Exit code", "-" if job.exit_code is None else str(job.exit_code)),
        ("Attempt", str(job.attempt)),
        ("Grace period", format_duration(job.grace_seconds)),
    ]
    print_fields(fields)
    if job.worker_list:
        click.echo()
        click.echo("Workers:")
        print_table(
            ("RANK", "NODE", "GPUS", "STATE", "PID", "EXIT CODE"),
            [
                [
                    str(w.rank),
                    w.node or "-",
                    ",".join(map(str, w.gpu_ids)) or "-",
                    w.state,
                    "-" if w.pid is None else str(w.pid),
                    "-" if w.exit_code is None else str(w.exit_code),
                ]
                for w in job.worker_list
            ],
        )
    click.echo()
    if not job.events:
        click.echo("Events: -")
        return
    click.echo("Events:")
    print_table(
        ("TIME", "TYPE", "MESSAGE"),
        [[time_and_age(e.at, now), e.type, e.message] for e in job.events],
    )
