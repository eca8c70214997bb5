"""``corral project …``: create projects, manage members, choose the current project."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from corral.cli.config import CliConfig, CliState, pass_state
from corral.cli.output import (
    listing,
    number,
    output_option,
    parse,
    print_table,
)
from corral.cli.params import DURATION, POOL_NAME, PROJECT_NAME, USER_NAME
from corral.core.quantities import format_duration
from corral.core.schemas import DEFAULT_GPU_MEMORY_POLICY, ProjectOut

PROJECT_COLUMNS = (
    "NAME", "QUOTA", "FAIR-SHARE", "ALLOCATED", "RUNNING", "PENDING", "LIMIT", "PRIORITY",
    "PARENT", "MEMBERS", "CURRENT",
)  # fmt: skip

F = TypeVar("F", bound=Callable[..., Any])


def project_row(project: ProjectOut, current: str | None) -> list[str]:
    return [
        project.name,
        number(project.quota),
        "-" if project.fair_share is None else number(project.fair_share),
        number(project.gpus_allocated),
        str(project.jobs_running),
        str(project.jobs_pending),
        "-" if project.limit is None else number(project.limit),
        str(project.priority),
        project.parent or "-",
        # Comma-joined without spaces so the column stays one word for awk.
        ",".join(project.members) or "-",
        "*" if project.name == current else "",
    ]


def settings_options(func: F) -> F:
    """The scheduling settings shared by `project create` and `project update`."""
    options = [
        click.option(
            "--quota",
            type=click.FloatRange(min=0),
            help="Guaranteed GPUs (its deserved share; may be fractional, e.g. 2.5).",
        ),
        click.option(
            "--weight",
            type=click.FloatRange(min=0),
            help="Over-quota weight: idle GPUs are lent in proportion to it. [default: the quota]",
        ),
        click.option("--limit", type=click.FloatRange(min=0), help="Hard cap on GPUs in use."),
        click.option(
            "--priority",
            type=click.IntRange(-1000, 1000),
            help="Queue priority: higher is served first and reclaimed last. [default: 0]",
        ),
        click.option(
            "--pools",
            type=POOL_NAME,
            multiple=True,
            help="Node pool it may use (repeatable). [default: all pools]",
        ),
        click.option(
            "--interactive-limit",
            type=DURATION,
            metavar="DURATION",
            help="Interactive jobs are stopped after running this long, e.g. 8h.",
        ),
        click.option(
            "--parent",
            type=PROJECT_NAME,
            help="Department (parent project) whose quota bounds this project's.",
        ),
        click.option(
            "--gpu-memory-policy",
            type=click.Choice(["off", "warn", "stop"]),
            help="What happens to a job on part of a shared GPU (--gpus 0.5, --gpu-memory) "
            "that uses more GPU memory than its share: warn its user (an event on the "
            "job), stop it, or nothing. [default: warn]",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_body(**values: Any) -> dict[str, Any]:
    """The API fields for the options that were given."""
    names = {"interactive_limit": "interactive_limit_seconds"}
    body: dict[str, Any] = {}
    for key, value in values.items():
        if value is None or value == ():
            continue
        body[names.get(key, key)] = list(value) if isinstance(value, tuple) else value
    return body


def describe_settings(p: ProjectOut) -> str:
    parts = [f"quota {number(p.quota)}", f"weight {number(p.weight)}"]
    if p.limit is not None:
        parts.append(f"limit {number(p.limit)}")
    if p.priority:
        parts.append(f"priority {p.priority}")
    if p.pools is not None:
        parts.append(f"pools {','.join(p.pools)}")
    if p.interactive_limit_seconds is not None:
        parts.append(f"interactive limit {format_duration(p.interactive_limit_seconds)}")
    if p.parent:
        parts.append(f"parent {p.parent}")
    if p.gpu_memory_policy != DEFAULT_GPU_MEMORY_POLICY:
        parts.append(f"GPU memory over share: {p.gpu_memory_policy}")
    return ", ".join(parts)


@click.group(
    epilog="""\b
Examples:
  corral project list
  corral project set team-a            # new jobs go to team-a
  corral project create team-b         # admin
  corral project add-member team-b alice
"""
)
def project() -> None:
    """Manage projects and choose the current one.

    Projects group jobs and people; each job runs in one project. The current
    project (`corral project set`) is where `corral submit` puts jobs when --project
    is not given.
    """


@project.command(
    "create",
    epilog="""\b
Examples:
  corral project create team-a --quota 4
  corral project create team-b --quota 2 --weight 1 --limit 6 --interactive-limit 8h
  corral project create vision --quota 8                  # a department ...
  corral project create vision-3d --quota 4 --parent vision   # ... and a team in it
  corral project create inference --quota 2 --gpu-memory-policy stop
""",
)
@click.argument("name", type=PROJECT_NAME)
@settings_options
@pass_state
def project_create(state: CliState, /, name: str, **settings: Any) -> None:
    """Create project NAME with its GPU quota and scheduling settings (admins only).

    A project always gets up to its quota when it asks for it; GPUs nobody's quota is
    using are lent to projects that want more, in proportion to their weights, and
    taken back (by preempting train jobs) when their owners need them.
    """
    with state.client() as api:
        created = parse(
            ProjectOut, api.post("/projects", {"name": name, **settings_body(**settings)})
        )
    click.echo(f"Project {created.name} created: {describe_settings(created)}.")
    click.echo(f"Add people to it with: corral project add-member {created.name} USER")


@project.command("update")
@click.argument("name", type=PROJECT_NAME)
@settings_options
@click.option("--no-limit", is_flag=True, help="Remove the hard cap.")
@click.option("--all-pools", is_flag=True, help="Allow every node pool again.")
@click.option("--no-interactive-limit", is_flag=True, help="Remove the interactive limit.")
@click.option("--no-parent", is_flag=True, help="Detach from its department.")
@click.option("--default-weight", is_flag=True, help="Make the weight equal the quota again.")
@pass_state
def project_update(
    state: CliState,
    /,
    name: str,
    no_limit: bool,
    all_pools: bool,
    no_interactive_limit: bool,
    no_parent: bool,
    default_weight: bool,
    **settings: Any,
) -> None:
    """Change project NAME's quota or other settings (admins only)."""
    clear = [
        field
        for flag, field in (
            (no_limit, "limit"),
            (all_pools, "pools"),
            (no_interactive_limit, "interactive_limit_seconds"),
            (no_parent, "parent"),
            (default_weight, "weight"),
        )
        if flag
    ]
    body = {**settings_body(**settings), "clear": clear}
    if len(body) == 1 and not clear:
        raise click.UsageError("nothing to change: give at least one setting")
    with state.client() as api:
        updated = parse(ProjectOut, api.request("PATCH", f"/projects/{name}", json=body))
    click.echo(f"Project {updated.name}: {describe_settings(updated)}.")


@project.command("list")
@output_option
@pass_state
def project_list(state: CliState, output: str) -> None:
    """List projects: quota, fair share, GPUs allocated, running and pending jobs.

    FAIR-SHARE is what the scheduler last computed the project is due now (its quota,
    plus its part of idle GPUs when it wants more). The current project is marked
    with '*' in the CURRENT column.
    """
    with state.client() as api:
        data = api.get("/projects")
    projects = listing(data, ProjectOut, "projects", output)
    if projects:
        current = state.current_project
        print_table(PROJECT_COLUMNS, [project_row(p, current) for p in projects])


@project.command("add-member")
@click.argument("project_name", metavar="PROJECT", type=PROJECT_NAME)
@click.argument("user", type=USER_NAME)
@pass_state
def project_add_member(state: CliState, project_name: str, user: str) -> None:
    """Let USER submit jobs to PROJECT (admins only)."""
    with state.client() as api:
        updated = parse(ProjectOut, api.post(f"/projects/{project_name}/members", {"user": user}))
    click.echo(f"{user} is now a member of {updated.name} ({', '.join(updated.members)}).")


@project.command("remove-member")
@click.argument("project_name", metavar="PROJECT", type=PROJECT_NAME)
@click.argument("user", type=USER_NAME)
@pass_state
def project_remove_member(state: CliState, project_name: str, user: str) -> None:
    """Remove USER from PROJECT (admins only). Their running jobs are not stopped."""
    with state.client() as api:
        updated = parse(ProjectOut, api.delete(f"/projects/{project_name}/members/{user}"))
    click.echo(f"{user} is no longer a member of {updated.name}.")


@project.command("set")
@click.argument("name", type=PROJECT_NAME)
@pass_state
def project_set(state: CliState, name: str) -> None:
    """Make NAME the current project: where new jobs go when --project is not given.

    The choice is saved in $CORRAL_HOME/config.json (like `runai project set`).
    """
    with state.client() as api:
        found = parse(ProjectOut, api.get(f"/projects/{name}"))  # NotFound if it is not there
    config = state.config
    state.save_config(CliConfig(server=config.server, token=config.token, project=found.name))
    click.echo(f"Current project is now {found.name}.")


COMMANDS: Sequence[click.Command] = (project,)
