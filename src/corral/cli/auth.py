"""``corral login``, ``corral logout`` and ``corral whoami``."""

from __future__ import annotations

import os

import click

from corral.cli.config import (
    SERVER_ENV,
    TOKEN_ENV,
    CliConfig,
    CliState,
    pass_state,
)
from corral.cli.output import output_option, parse, print_data, print_fields
from corral.cli.params import SERVER_URL
from corral.core.errors import CorralError
from corral.core.schemas import WhoAmI


@click.command(
    epilog="""\b
Examples:
  corral login --server http://gpu-head:8420      # asks for the token
  corral login --server http://gpu-head:8420 --token "$(cat my-token)"
""",
)
@click.option(
    "--server", "server_opt", type=SERVER_URL, metavar="URL", help="The Corral server's URL."
)
@click.option(
    "--token", "token_opt", metavar="TOKEN", help="Your API token (asked for when omitted)."
)
@pass_state
def login(state: CliState, server_opt: str | None, token_opt: str | None) -> None:
    """Log in to a Corral server.

    The token is checked with the server first, then saved with the server's URL in
    $CORRAL_HOME/config.json (readable by you only). An admin gives you a token with
    `corral user create` or `corral user token`.
    """
    server = server_opt or state.server
    token = token_opt or state.token_flag
    if not token:
        token = click.prompt(f"Token for {server}", hide_input=True).strip()
    if not token:
        raise CorralError("no token given")
    with state.client(server=server, token=token) as api:
        who = parse(WhoAmI, api.get("/whoami"))
    old = state.config
    # The current project belongs to a cluster; it means nothing on another one.
    project = old.project if old.server == server else None
    state.save_config(CliConfig(server=server, token=token, project=project))
    click.echo(f"Logged in to {server} as {who.name} ({who.role.value}).")
    if project is None and who.projects:
        click.echo(
            f"Your projects: {', '.join(who.projects)}. "
            "Choose the one new jobs go to with `corral project set NAME`."
        )
    for var, what in ((SERVER_ENV, "server"), (TOKEN_ENV, "token")):
        if os.environ.get(var):
            click.echo(f"note: ${var} is set and overrides the saved {what}.", err=True)


@click.command()
@pass_state
def logout(state: CliState) -> None:
    """Forget the saved token.

    The server URL and the current project are kept.
    """
    config = state.config
    if not config.token:
        click.echo("Not logged in.")
        return
    state.save_config(CliConfig(server=config.server, token=None, project=config.project))
    click.echo(f"Logged out of {config.server or state.server}.")
    if os.environ.get(TOKEN_ENV):
        click.echo(f"note: ${TOKEN_ENV} is still set in your environment.", err=True)


@click.command()
@output_option
@pass_state
def whoami(state: CliState, output: str) -> None:
    """Show who you are to the server: your name, role and projects."""
    with state.client() as api:
        data = api.get("/whoami")
    if output != "table":
        print_data(data, output)
        return
    who = parse(WhoAmI, data)
    print_fields(
        [
            ("User", who.name),
            ("Role", who.role.value),
            ("Projects", ", ".join(who.projects) or "-"),
            ("Server", state.server),
            ("Current project", state.current_project or "- (jobs go to 'default')"),
        ]
    )


COMMANDS = (login, logout, whoami)
