"""Administration: ``corral user …`` and ``corral join-token``.

Tokens are shown exactly once (the server keeps only a hash), so these commands print
them together with the command the recipient runs, ready to copy.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from urllib.parse import urlsplit

import click

from corral.cli.config import CliState, pass_state
from corral.cli.output import (
    listing,
    output_option,
    parse,
    print_data,
    print_table,
    relative,
    time_and_age,
)
from corral.cli.params import USER_NAME, DurationType
from corral.cli.projects import COMMANDS as PROJECT_COMMANDS
from corral.core.errors import CorralError
from corral.core.schemas import JoinTokenOut, TokenOut, UserOut
from corral.core.states import Role

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _print_login_token(state: CliState, token: TokenOut) -> None:
    click.echo(f"API token for {token.user} (shown only once, keep it secret):")
    click.echo(f"  {token.token}")
    click.echo(f"{token.user} logs in with:")
    click.echo(f"  corral login --server {state.server} --token {shlex.quote(token.token)}")


@click.group(
    epilog="""\b
Examples:
  corral user create alice                 # prints alice's token and login command
  corral user create carol --admin --unix-user cjones
  corral user token alice --description laptop
"""
)
def user() -> None:
    """Manage users and their API tokens.

    Admins create users; anyone may make new tokens for themself.
    """


@user.command("create")
@click.argument("name", type=USER_NAME)
@click.option("--admin", is_flag=True, help="Make the user an admin (manages the cluster).")
@click.option(
    "--unix-user",
    metavar="ACCOUNT",
    help="Unix account their jobs run as on nodes whose agent runs as root "
    "(default: the user's name).",
)
@pass_state
def user_create(state: CliState, name: str, admin: bool, unix_user: str | None) -> None:
    """Create user NAME and a first API token for them."""
    body = {"name": name, "role": (Role.ADMIN if admin else Role.USER).value}
    if unix_user:
        body["unix_user"] = unix_user
    with state.client() as api:
        created = parse(UserOut, api.post("/users", body))
        click.echo(
            f"User {created.name} created (role {created.role.value}; jobs run as Unix "
            f"account {created.unix_user} on nodes whose agent is root)."
        )
        try:
            token = parse(
                TokenOut, api.post(f"/users/{name}/tokens", {"description": "first token"})
            )
        except CorralError as exc:
            raise CorralError(
                f"user {name} was created, but making their token failed ({exc}): "
                f"run `corral user token {name}`"
            ) from exc
    _print_login_token(state, token)
    click.echo(f"Add them to a project with: corral project add-member PROJECT {name}")


@user.command("list")
@output_option
@pass_state
def user_list(state: CliState, output: str) -> None:
    """List users: role, Unix account for jobs, projects, and when they were created."""
    with state.client() as api:
        data = api.get("/users")
    users = listing(data, UserOut, "users", output)
    if users:
        now = state.clock()
        print_table(
            ("NAME", "ROLE", "UNIX-USER", "PROJECTS", "CREATED"),
            [
                [
                    u.name,
                    u.role.value,
                    u.unix_user,
                    ",".join(u.projects) or "-",
                    relative(u.created_at, now),
                ]
                for u in users
            ],
        )


@user.command("token")
@click.argument("name", type=USER_NAME)
@click.option(
    "-d", "--description", default="", help="What the token is for (e.g. 'laptop', 'CI')."
)
@output_option
@pass_state
def user_token(state: CliState, name: str, description: str, output: str) -> None:
    """Make a new API token for user NAME (admins, or the user themself).

    Older tokens stay valid.
    """
    with state.client() as api:
        data = api.post(f"/users/{name}/tokens", {"description": description})
    if output != "table":
        print_data(data, output)
    else:
        _print_login_token(state, parse(TokenOut, data))


@click.command(
    "join-token",
    epilog="""\b
Examples:
  corral join-token                  # valid for 24 hours
  corral join-token --ttl 1h -o json | jq -r .token
""",
)
@click.option(
    "--ttl",
    type=DurationType(allow_zero=False),
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="How long the token can be used to join (e.g. 30m, 24h, 7d).",
)
@output_option
@pass_state
def join_token(state: CliState, ttl: float, output: str) -> None:
    """Make a token for adding GPU servers to the cluster.

    Admins only. Run the printed `corral agent` command on each server; the agent trades the join
    token for a node token of its own, so the join token can expire afterwards.
    """
    with state.client() as api:
        data = api.post("/join-tokens", {"ttl_seconds": ttl})
    if output != "table":
        print_data(data, output)
        return
    made = parse(JoinTokenOut, data)
    expiry = time_and_age(made.expires_at, state.clock()) if made.expires_at else "never"
    click.echo(f"Join token (expires {expiry}):")
    click.echo(f"  {made.token}")
    click.echo("Start an agent on each GPU server with:")
    click.echo(f"  corral agent --server {state.server} --join-token {shlex.quote(made.token)}")
    if urlsplit(state.server).hostname in _LOOPBACK_HOSTS:
        click.echo(
            "note: that URL only works on this machine; agents elsewhere need an address "
            "they can reach (start the server with --host 0.0.0.0 and use its host name).",
            err=True,
        )


COMMANDS: Sequence[click.Command] = (*PROJECT_COMMANDS, user, join_token)
