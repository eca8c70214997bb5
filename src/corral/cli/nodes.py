"""``corral nodes`` and ``corral node NAME``: the machines of the cluster and their GPUs."""

from __future__ import annotations

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
from corral.core.quantities import format_bytes
from corral.core.schemas import NodeList, NodeOut

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


def node_row(node: NodeOut, now: datetime) -> list[str]:
    return [
        node.name,
        node.state.value,
        f"{node.gpus_allocated}/{node.gpus}",
        gpu_models(node),
        str(node.cpu_cores),
        format_bytes(node.memory_bytes),
        node.driver_version or "-",
        node.cuda_version or "-",
        heartbeat(node, now),
    ]


def print_nodes(nodes: Sequence[NodeOut], now: datetime) -> None:
    print_table(NODE_COLUMNS, [node_row(node, now) for node in nodes])


def print_node(node: NodeOut, now: datetime) -> None:
    backend = node.gpu_backend
    if is_simulated(node) and "simulated" not in backend:
        backend += f" {SIMULATED}"
    print_fields(
        [
            ("Name", node.name),
            ("State", node.state.value),
            ("Reason", node.reason or "-"),
            ("Hostname", node.hostname),
            ("GPUs", f"{node.gpus_allocated}/{node.gpus} allocated"),
            ("GPU backend", backend),
            ("CPUs", str(node.cpu_cores)),
            ("Memory", format_bytes(node.memory_bytes)),
            ("Driver", node.driver_version or "-"),
            ("CUDA", node.cuda_version or "-"),
            ("Agent version", node.agent_version or "-"),
            ("Last heartbeat", time_and_age(node.last_heartbeat, now)),
            ("Registered", time_and_age(node.registered_at, now)),
        ]
    )
    click.echo()
    if node.gpu_devices:
        click.echo("GPUs:" + (f" {SIMULATED}" if is_simulated(node) else ""))
        print_table(
            ("INDEX", "UUID", "MODEL", "MEMORY"),
            [
                [str(g.index), g.uuid, g.model, format_bytes(g.memory_bytes)]
                for g in sorted(node.gpu_devices, key=lambda g: g.index)
            ],
        )
    else:
        click.echo("GPUs: none")
    click.echo()
    click.echo("Jobs: " + (", ".join(node.jobs) if node.jobs else "none"))


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
    """Show a node's hardware, GPUs and jobs.

    Node NAME's state, versions and hardware, each GPU (index, UUID, model, memory),
    and the jobs on it.
    """
    with state.client() as api:
        data = api.get(f"/nodes/{name}")
    if output != "table":
        print_data(data, output)
    else:
        print_node(parse(NodeOut, data), state.clock())


COMMANDS: Sequence[click.Command] = (nodes, node)
