"""``corral nodes`` and ``corral node NAME``: the machines of the cluster and their GPUs.

Driver and CUDA versions are compared across nodes: a node that runs another version
than most is flagged ("drift"), since a job that works on seven nodes and fails on the
eighth is most often that.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime

import click

from corral.cli.config import CliState, pass_state
from corral.cli.output import (
    Column,
    output_option,
    parse,
    print_data,
    print_empty,
    print_fields,
    print_table,
    relative,
    time_and_age,
)
from corral.cli.params import NODE_NAME
from corral.cli.top import fetch_cluster, gib_pair, is_fresh, percent, plain, render_top
from corral.core.errors import NotFound
from corral.core.quantities import format_bytes
from corral.core.schemas import NodeList, NodeOut
from corral.core.telemetry import ClusterNow, HostSample, NodeNow

SIMULATED = "(simulated)"

NODE_COLUMNS = (
    Column("NAME"),
    Column("STATE", styled=True),
    Column("GPUS"),
    Column("MODEL"),
    Column("CPUS"),
    Column("MEMORY"),
    Column("DRIVER"),
    Column("CUDA"),
    Column("HEARTBEAT"),
)


def is_simulated(node: NodeOut) -> bool:
    return node.simulated or any(gpu.simulated for gpu in node.gpu_devices)


def gpu_models(node: NodeOut) -> str:
    """The node's GPU model(s), marked when the GPUs are simulated (never mistaken for real)."""
    models = list(dict.fromkeys(gpu.model for gpu in node.gpu_devices))
    text = ", ".join(models) or "-"
    return f"{text} {SIMULATED}" if is_simulated(node) and models else text


def heartbeat(node: NodeOut, now: datetime) -> str:
    return relative(node.last_heartbeat, now) if node.last_heartbeat else "never"


def most_common(values: Sequence[str | None]) -> tuple[str, int, int] | None:
    """The version most nodes report, how many report it, and how many report any
    (None: none does). Nodes with no version (simulated, no driver) are not counted."""
    known = [v for v in values if v]
    if not known:
        return None
    version, count = Counter(known).most_common(1)[0]
    return version, count, len(known)


def drift(value: str | None, values: Sequence[str | None]) -> str | None:
    """``differs from 550.54.15 on 7 of 8 nodes`` when ``value`` is rarer than the most
    common of ``values`` (every node's version); None when it is as common (a tie is
    no majority) or unknown."""
    common = most_common(values)
    if not value or common is None:
        return None
    version, count, total = common
    if value == version or sum(1 for v in values if v == value) >= count:
        return None
    return f"differs from {version} on {count} of {total} nodes"


def version_cell(value: str | None, values: Sequence[str | None]) -> str:
    """The version, with ``*`` when it drifts from most nodes' (see `drift`)."""
    return (value or "-") + ("*" if drift(value, values) else "")


def node_row(
    node: NodeOut, now: datetime, drivers: Sequence[str | None], cudas: Sequence[str | None]
) -> list[str]:
    return [
        node.name,
        node.state.value,
        f"{node.gpus_allocated}/{node.gpus}",
        gpu_models(node),
        str(node.cpu_cores),
        format_bytes(node.memory_bytes),
        version_cell(node.driver_version, drivers),
        version_cell(node.cuda_version, cudas),
        heartbeat(node, now),
    ]


def drift_footnote(nodes: Sequence[NodeOut]) -> str | None:
    """``* not the version most nodes run: driver 550.54.15 (7 of 8 nodes)``, or None."""
    notes = []
    for what, values in (
        ("driver", [n.driver_version for n in nodes]),
        ("CUDA", [n.cuda_version for n in nodes]),
    ):
        common = most_common(values)
        if common and any(drift(v, values) for v in values):
            notes.append(f"{what} {common[0]} ({common[1]} of {common[2]} nodes)")
    return f"* not the version most nodes run: {', '.join(notes)}" if notes else None


def print_nodes(nodes: Sequence[NodeOut], now: datetime) -> None:
    drivers = [n.driver_version for n in nodes]
    cudas = [n.cuda_version for n in nodes]
    print_table(NODE_COLUMNS, [node_row(node, now, drivers, cudas) for node in nodes])
    footnote = drift_footnote(nodes)
    if footnote:
        click.echo(footnote)


def _with_drift(value: str | None, values: Sequence[str | None]) -> str:
    note = drift(value, values)
    return (value or "-") + (f" ({note})" if note else "")


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{format_bytes(round(value))}/s"


def host_fields(host: HostSample) -> list[tuple[str, str]]:
    """A sample's host numbers as ``print_fields`` lines (n/a: not reported)."""
    cpu = percent(host.cpu_percent)
    if host.cpu_count is not None:
        cpu += f" of {host.cpu_count} cores"
    if host.load1 is not None:
        cpu += f" (load {host.load1:.1f})"
    fields = [
        ("CPU", cpu),
        ("Memory", gib_pair(host.memory_used_bytes, host.memory_total_bytes)),
        ("Swap", gib_pair(host.swap_used_bytes, host.swap_total_bytes)),
        (
            "Disk I/O",
            f"read {_rate(host.disk_read_bytes_per_s)}, write {_rate(host.disk_write_bytes_per_s)}",
        ),
        ("Network", f"rx {_rate(host.net_rx_bytes_per_s)}, tx {_rate(host.net_tx_bytes_per_s)}"),
        ("Power", "n/a" if host.power_watts is None else f"{host.power_watts:.0f}W"),
    ]
    if host.filesystems:
        fields.append(
            (
                "Filesystems",
                "\n".join(
                    f"{f.mount}  {format_bytes(f.used_bytes)}/{format_bytes(f.total_bytes)}"
                    for f in host.filesystems
                ),
            )
        )
    if host.temperatures_celsius:
        fields.append(
            (
                "Temperatures",
                ", ".join(f"{k} {v:.0f}C" for k, v in sorted(host.temperatures_celsius.items())),
            )
        )
    return fields


def print_sample(live: NodeNow | None, now: datetime) -> None:
    """The newest sample: host numbers, then the GPUs as `corral top` shows them."""
    if live is None:
        click.echo("Newest sample: not available from this server")
        return
    if live.sampled_at is None:
        click.echo("Newest sample: none yet")
        return
    fresh = is_fresh(live, now)
    click.echo(f"Newest sample ({relative(live.sampled_at, now)}{'' if fresh else ', stale'}):")
    if live.host is not None:
        print_fields(host_fields(live.host))
    if fresh and live.gpus:
        click.echo()
        click.echo("GPUs now:")
        # The node's lines of a `corral top` frame, without its summary and header.
        frame = render_top(ClusterNow(at=now, nodes=[live]), now)
        click.echo(plain(frame[3:]))


def print_node(
    node: NodeOut,
    now: datetime,
    peers: Sequence[NodeOut] = (),
    live: NodeNow | None = None,
) -> None:
    """The `corral node` view. ``peers``: every node (driver/CUDA drift is judged
    against them); ``live``: the node in ``/metrics/now`` (None: not available)."""
    peers = peers or [node]
    backend = node.gpu_backend
    if is_simulated(node) and "simulated" not in backend:
        backend += f" {SIMULATED}"
    print_fields(
        [
            ("Name", node.name),
            ("State", node.state.value),
            ("Reason", node.reason or "-"),
            ("Pool", node.pool),
            ("Address", node.address or f"{node.hostname} (hostname)"),
            ("Hostname", node.hostname),
            ("GPUs", f"{node.gpus_allocated}/{node.gpus} allocated"),
            ("GPU backend", backend),
            ("CPUs", str(node.cpu_cores)),
            ("Memory", format_bytes(node.memory_bytes)),
            ("Driver", _with_drift(node.driver_version, [n.driver_version for n in peers])),
            ("CUDA", _with_drift(node.cuda_version, [n.cuda_version for n in peers])),
            (
                "Containers",
                node.container_engine or "none (container jobs are not placed here)",
            ),
            ("Agent version", node.agent_version or "-"),
            ("Last heartbeat", time_and_age(node.last_heartbeat, now)),
            ("Registered", time_and_age(node.registered_at, now)),
        ]
    )
    click.echo()
    if node.gpu_devices:
        click.echo("GPUs:" + (f" {SIMULATED}" if is_simulated(node) else ""))
        rows = []
        for g in sorted(node.gpu_devices, key=lambda g: g.index):
            rows.append([str(g.index), g.uuid, g.model, format_bytes(g.memory_bytes)])
            rows.extend(
                ["└", m.uuid, f"MIG {m.profile}", format_bytes(m.memory_bytes)] for m in g.mig
            )
        print_table(("INDEX", "UUID", "MODEL", "MEMORY"), rows)
    else:
        click.echo("GPUs: none")
    click.echo()
    click.echo("Jobs: " + (", ".join(node.jobs) if node.jobs else "none"))
    click.echo()
    print_sample(live, now)


@click.command()
@output_option
@pass_state
def nodes(state: CliState, output: str) -> None:
    """List the cluster's nodes and their GPUs.

    Shows each node's state, GPUs allocated/total, GPU model, CPUs, memory, driver
    and CUDA versions, and when it last reported. Nodes whose GPUs are simulated
    (`corral demo`, `corral agent --simulate-gpus`) are marked "(simulated)".
    """
    with state.client() as api:
        data = api.get("/nodes")
    node_list = parse(NodeList, data).nodes
    if output != "table":
        print_data(data["nodes"], output)
    elif not node_list:
        print_empty("nodes (start an agent on a GPU server: see `corral join-token`)")
    else:
        print_nodes(node_list, state.clock())


@click.command()
@click.argument("name", type=NODE_NAME)
@output_option
@pass_state
def node(state: CliState, name: str, output: str) -> None:
    """Show a node's hardware, health, GPUs and jobs.

    Node NAME's state, pool, address, versions and hardware; driver and CUDA versions
    that differ from most nodes' are flagged. Then each GPU (index, UUID, model, memory,
    MIG instances), the jobs on it, and its newest sample: CPU, memory, disks, network
    and the GPUs as `corral top` shows them.
    """
    with state.client() as api:
        data = api.get(f"/nodes/{name}")
        if output != "table":
            print_data(data, output)
            return
        peers = parse(NodeList, api.get("/nodes")).nodes
        try:
            live = next(iter(fetch_cluster(api, [name]).nodes), None)
        except NotFound:
            live = None  # a server without /metrics/now (older), or the node just left
    print_node(parse(NodeOut, data), state.clock(), peers, live)


COMMANDS: Sequence[click.Command] = (nodes, node)
