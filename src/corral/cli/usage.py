"""``corral disk-usage``: who uses how much of the scanned paths (/home, /scratch …)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import click

from corral.cli.config import CliState, pass_state
from corral.cli.output import output_option, parse, print_data, print_table, time_and_age
from corral.core.quantities import format_bytes
from corral.core.telemetry import DiskUsageList


@click.command("disk-usage")
@click.option("--node", help="Only this node.")
@click.option("--path", "path_", metavar="PATH", help="Only this scanned path, e.g. /home.")
@click.option("-u", "--user", help="Only this Unix user.")
@output_option
@pass_state
def disk_usage(
    state: CliState, node: str | None, path_: str | None, user: str | None, output: str
) -> None:
    """Show per-user disk usage of the paths agents scan, largest first.

    Agents scan the paths given with `corral agent --disk-usage PATH` at low priority
    (by default every hour); this shows each node's latest completed scan.
    """
    with state.client() as api:
        wanted = {"node": node, "path": path_, "user": user}
        params = {k: v for k, v in wanted.items() if v is not None}
        data = api.request("GET", "/metrics/disk-usage", params=params)
    if output != "table":
        print_data(data["usage"], output)
        return
    rows = parse(DiskUsageList, data).usage
    if not rows:
        click.echo(
            "No disk usage reported (start agents with `--disk-usage PATH`; the first scan "
            "of a large tree can take a while)."
        )
        return
    now = datetime.now(UTC)
    print_table(
        ("NODE", "PATH", "USER", "USED", "FILES", "SCANNED"),
        [
            [
                r.node,
                r.path,
                r.user,
                format_bytes(r.used_bytes),
                f"{r.files:,}",
                time_and_age(r.scanned_at, now),
            ]
            for r in rows
        ],
    )


COMMANDS: Sequence[click.Command] = (disk_usage,)
