"""``corral project …``: create projects, manage members, choose the current project."""

from __future__ import annotations

from collections.abc import Sequence

import click

from corral.cli.config import CliConfig, CliState, pass_state
from corral.cli.output import (
    number,
    output_option,
    parse,
    parse_items,
    print_data,
    print_empty,
    print_table,
)
from corral.cli.params import PROJECT_NAME, USER_NAME
from corral.core.schemas import ProjectOut

PROJECT_COLUMNS = ("NAME", "MEMBERS", "RUNNING", "PENDING", "GPUS-ALLOCATED", "CURRENT")


def project_row(project: ProjectOut, current: str | None) -> list[str]:
    return [
        project.name,
        # Comma-joined without spaces so the column stays one word for awk.
        ",".join(project.members) or "-",
        str(project.jobs_running),
        str(project.jobs_pending),
        number(project.gpus_allocated),
        "*" if project.name == current else "",
    ]


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


@project.command("create")
@click.argument("name", type=PROJECT_NAME)
@pass_state
def project_create(state: CliState, name: str) -> None:
    """Create project NAME (admins only)."""
    with state.client() as api:
        created = parse(ProjectOut, api.post("/projects", {"name": name}))
    click.echo(f"Project {created.name} created.")
    click.echo(f"Add people to it with: corral project add-member {created.name} USER")


@project.command("list")
@output_option
@pass_state
def project_list(state: CliState, output: str) -> None:
    """List projects with their members, running and pending jobs, and GPUs in use.

    The current project is marked with '*' in the CURRENT column.
    """
    with state.client() as api:
        data = api.get("/projects")
    projects = parse_items(ProjectOut, data, "projects")
    if output != "table":
        print_data(data["projects"], output)
    elif not projects:
        print_empty("projects")
    else:
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
