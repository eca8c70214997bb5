"""The root ``corral`` command: global options, the command tree, and error handling.

Expected errors (every `CorralError`, including the client's `Unavailable`) are printed as
one ``error: …`` line on stderr with exit code 1; usage errors exit with 2 (click's
default); Ctrl-C exits with 130. A traceback means a bug.
"""

from __future__ import annotations

from typing import Any

import click

from corral import __version__
from corral.cli import (
    admin,
    auth,
    daemons,
    demo,
    interactive,
    jobs,
    nodes,
    sim,
    top,
    up,
    usage,
    volumes,
)
from corral.cli.config import SERVER_ENV, TOKEN_ENV, get_state
from corral.cli.params import SERVER_URL
from corral.core.errors import CorralError, Unauthorized, Unavailable

# Sections of `corral --help`, in the order a new user meets them. A command missing here
# is still listed, under "Other commands", so a new command can never be hidden.
_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Jobs", ("submit", "list", "queue", "get", "logs", "delete")),
    ("Interactive", ("bash", "exec", "port-forward")),
    ("Cluster", ("top", "free", "nodes", "node", "disk-usage", "project")),
    ("Account", ("login", "logout", "whoami")),
    ("Administration", ("user", "join-token", "sim")),
    ("Run Corral", ("up", "demo", "server", "agent")),
)

_HINTS: dict[type[CorralError], str] = {
    Unavailable: f"is the server running? set {SERVER_ENV} or run `corral login`",
    Unauthorized: f"log in with a valid token: `corral login` (or set {TOKEN_ENV})",
}


def report_error(exc: CorralError) -> None:
    """Print ``error: <message>`` (and a hint for the errors that have an obvious cure)."""
    click.echo(f"error: {exc}", err=True)
    for cls, hint in _HINTS.items():
        if isinstance(exc, cls):
            click.echo(f"hint: {hint}", err=True)


class CorralGroup(click.Group):
    """The root group: turns expected errors into messages and lists commands by topic."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CorralError as exc:
            report_error(exc)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo(err=True)  # end the line the terminal's ^C was printed on
            ctx.exit(130)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        listed: set[str] = set()
        names_width = max((len(name) for name in self.list_commands(ctx)), default=0)
        sections = [*_SECTIONS, ("Other commands", tuple(self.list_commands(ctx)))]
        for title, names in sections:
            rows = []
            for name in names:
                cmd = self.get_command(ctx, name)
                if cmd is None or cmd.hidden or name in listed:
                    continue
                listed.add(name)
                # Names padded alike so that every section lines up the same.
                rows.append(
                    (
                        name.ljust(names_width),
                        cmd.get_short_help_str(limit=formatter.width - 6 - names_width),
                    )
                )
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


@click.group(
    cls=CorralGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  corral up                                   # a server and an agent on this machine
  corral demo                                 # a simulated 3-node cluster with a workload
  corral login --server http://gpu-head:8420  # use a remote cluster
  corral submit train-1 -g 2 -- python train.py --epochs 10
  corral list
  corral logs -f train-1

Run `corral COMMAND --help` for the options of each command.""",
)
@click.option(
    "--server",
    type=SERVER_URL,
    metavar="URL",
    help=f"Corral server to talk to. Overrides ${SERVER_ENV} and the saved login.",
)
@click.option(
    "--token",
    metavar="TOKEN",
    help=f"API token to use. Overrides ${TOKEN_ENV} and the saved login.",
)
@click.version_option(__version__, "--version", prog_name="corral")
@click.pass_context
def cli(ctx: click.Context, server: str | None, token: str | None) -> None:
    """Corral: share a cluster's GPUs fairly, run jobs on them, and see who uses what.

    Submit jobs, follow their output, and see the cluster's nodes and projects. The
    server and token come from `corral login` (saved in $CORRAL_HOME/config.json),
    the environment, or the global options.
    """
    state = get_state(ctx)
    state.server_flag = server or state.server_flag
    state.token_flag = token or state.token_flag


for _command in (
    *auth.COMMANDS,
    *jobs.COMMANDS,
    *interactive.COMMANDS,
    *nodes.COMMANDS,
    *top.COMMANDS,
    *usage.COMMANDS,
    *admin.COMMANDS,
    *volumes.COMMANDS,
    *daemons.COMMANDS,
    *up.COMMANDS,
    *demo.COMMANDS,
    *sim.COMMANDS,
):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point (``corral``; also ``python -m corral``)."""
    cli(prog_name="corral")
