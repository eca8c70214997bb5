"""``corral volume …``: the host directories an admin offers to container jobs by name
(``corral submit --image IMAGE --volume NAME:/path``)."""

from __future__ import annotations

from collections.abc import Sequence

import click
from pydantic import ValidationError

from corral.cli.config import CliState, pass_state
from corral.cli.output import (
    listing,
    output_option,
    parse,
    print_table,
)
from corral.cli.params import NameType
from corral.core.schemas import VolumeCreate, VolumeOut

VOLUME_NAME = NameType("volume")


@click.group()
def volume() -> None:
    """Volumes: host directories container jobs may mount by name.

    Container jobs mount only these (unless the server runs with
    --allow-host-path-volumes), so an admin decides what of a node's disks jobs see.
    """


@volume.command("create")
@click.argument("name", type=VOLUME_NAME)
@click.argument("host_path", metavar="HOST_PATH")
@click.option("--read-only", is_flag=True, help="Jobs may read it, never write to it.")
@click.option("--description", help="What it holds, for `corral volume list`.")
@pass_state
def volume_create(
    state: CliState, name: str, host_path: str, read_only: bool, description: str | None
) -> None:
    """Offer HOST_PATH (a directory on every node) as volume NAME (admins only).

    {user} and {unix_user} in HOST_PATH become the job owner's Corral and Unix names, so
    `corral volume create home '/home/{unix_user}'` gives every user their own home.
    """
    if not host_path.startswith("/"):
        raise click.BadParameter(
            f"{host_path!r}: give an absolute path on the nodes", param_hint="HOST_PATH"
        )
    try:
        body = VolumeCreate(
            name=name, host_path=host_path, read_only=read_only, description=description
        )
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise click.BadParameter(message, param_hint="HOST_PATH") from exc
    with state.client() as api:
        created = parse(VolumeOut, api.post("/volumes", body.model_dump(mode="json")))
    mode = "read-only" if created.read_only else "read-write"
    click.echo(f"Volume {created.name}: {created.host_path} ({mode}).")
    click.echo(
        f"Jobs mount it with: corral submit NAME --image IMAGE --volume {created.name}:/path "
        "-- COMMAND"
    )


@volume.command("list")
@output_option
@pass_state
def volume_list(state: CliState, output: str) -> None:
    """List the volumes container jobs may mount."""
    with state.client() as api:
        data = api.get("/volumes")
    volumes = listing(data, VolumeOut, "volumes", output)
    if volumes:
        print_table(
            ("NAME", "HOST-PATH", "MODE", "DESCRIPTION"),
            [
                [v.name, v.host_path, "ro" if v.read_only else "rw", v.description or ""]
                for v in volumes
            ],
        )


@volume.command("delete")
@click.argument("name", type=VOLUME_NAME)
@pass_state
def volume_delete(state: CliState, name: str) -> None:
    """Stop offering volume NAME (admins only). Jobs submitted before keep it."""
    with state.client() as api:
        api.delete(f"/volumes/{name}")
    click.echo(f"Volume {name} deleted.")


COMMANDS: Sequence[click.Command] = (volume,)
