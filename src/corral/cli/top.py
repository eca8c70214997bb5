"""``corral top`` and ``corral free``: every GPU now, one line each, and what is free.

Both draw `ClusterNow` (``GET /metrics/now``). The renderers are pure functions of
(ClusterNow, now, width), so tests render frames with a fixed clock; the commands only
fetch, choose the output (rich on a terminal, plain text into a pipe) and loop.

Honesty rules, after `corral.core.telemetry`: a value a GPU cannot report shows as
"n/a", never 0; a node whose newest sample is older than `STALE_AFTER` seconds shows
"no data" and "-" instead of old numbers dressed up as current ones.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import click
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from corral.cli.config import CliState, pass_state
from corral.cli.jobs import _silence_stdout  # one way to leave a closed pipe
from corral.cli.output import (
    STATE_STYLES,
    Column,
    age,
    as_utc,
    output_option,
    parse,
    print_data,
    print_table,
    relative,
    stdout_is_terminal,
)
from corral.cli.params import DURATION, NODE_NAME
from corral.client import ApiClient
from corral.core.errors import NotFound, Unavailable
from corral.core.gpuview import (
    FreeReport,
    NodeFree,
    free_report,
    short_model,
    unmanaged_label,
)
from corral.core.quantities import format_bytes
from corral.core.telemetry import ClusterNow, GpuNow, JobRef, MigSample, NodeNow

STALE_AFTER = 10.0
"""Seconds after which a node's newest sample is no longer shown as current."""

MIN_INTERVAL = 0.5  # seconds: faster refreshes only load the server
GIB = 1024**3
WARN = "bold yellow"  # unmanaged use: a GPU the scheduler cannot hand out


# ---------------------------------------------------------------- small formatters


def percent(value: float | None) -> str:
    """``87%``; ``n/a`` when not reported."""
    return "n/a" if value is None else f"{value:.0f}%"


def gib_pair(used: int | None, total: int | None) -> str:
    """``61.2/80GiB`` (used/total; no decimal from 100 GiB); ``n/a`` when not reported."""
    if used is None or total is None:
        return "n/a"
    gib = used / GIB
    return f"{gib:.1f}/{total / GIB:.0f}GiB" if gib < 99.95 else f"{gib:.0f}/{total / GIB:.0f}GiB"


def power(watts: float | None, limit: float | None) -> str:
    """``310/400W``, ``310W`` without a limit, ``n/a``."""
    if watts is None:
        return "n/a"
    return f"{watts:.0f}/{limit:.0f}W" if limit is not None else f"{watts:.0f}W"


def temperature(celsius: float | None) -> str:
    return "n/a" if celsius is None else f"{celsius:.0f}C"


def clock_time(moment: datetime) -> str:
    """``14:03:22`` in this machine's time zone."""
    return as_utc(moment).astimezone().strftime("%H:%M:%S")


def is_fresh(node: NodeNow, now: datetime) -> bool:
    """True when the node's newest sample is at most `STALE_AFTER` seconds old."""
    if node.sampled_at is None:
        return False
    return (now - as_utc(node.sampled_at)).total_seconds() <= STALE_AFTER


def no_data(node: NodeNow, now: datetime) -> str:
    """``no data (last heartbeat 5s ago, last sample 2m ago)`` for a stale or silent node."""
    parts = [
        f"last heartbeat {relative(node.last_heartbeat, now)}"
        if node.last_heartbeat
        else "never sent a heartbeat"
    ]
    if node.sampled_at:
        parts.append(f"last sample {relative(node.sampled_at, now)}")
    return f"no data ({', '.join(parts)})"


def gang_jobs(cluster: ClusterNow) -> set[int]:
    """Ids of gang jobs (``workers`` > 1; from an older server that does not say, any job
    with a worker of rank > 0 in view)."""
    return {
        j.id for n in cluster.nodes for g in n.gpus for j in g.jobs if j.workers > 1 or j.rank > 0
    }


def job_label(job: JobRef, gangs: set[int]) -> str:
    """``train-1 (alice)``, ``tune (bob, 0.5)``, ``ddp (carol, rank 1)``."""
    extra = [job.user]
    if job.share:
        extra.append(job.share)
    if job.id in gangs:
        extra.append(f"rank {job.rank}")
    return f"{job.name} ({', '.join(extra)})"


# ---------------------------------------------------------------- the top frame


@dataclass(frozen=True)
class Layout:
    """What fits: ``bar`` cells per bar (0: numbers only), the model column's width,
    whether power shows, and the line width (None: plain text, never cut)."""

    bar: int
    model: int
    power: bool
    width: int | None


def layout_for(width: int | None) -> Layout:
    """Bars from 100 columns, power and load from 90; at 80 the holders keep about 40."""
    if width is None:
        return Layout(bar=0, model=16, power=True, width=None)
    if width >= 120:
        return Layout(bar=10, model=16, power=True, width=width)
    if width >= 100:
        return Layout(bar=5, model=14, power=True, width=width)
    return Layout(bar=0, model=14 if width >= 90 else 11, power=width >= 90, width=width)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _bar(value: float | None, cells: int, *, memory: bool = False, blank: bool = False) -> Text:
    """``cells`` wide plus a space; dots for n/a, spaces when there is no value at all.
    Busy compute is good news (green); nearly full memory is a warning."""
    if cells == 0:
        return Text()
    if value is None:
        return Text((" " if blank else "·") * cells + " ", style="dim")
    filled = max(0, min(cells, round(value / 100 * cells)))
    style = "green" if not memory or value < 75 else "yellow" if value < 90 else "red"
    return Text("█" * filled, style=style) + Text("░" * (cells - filled) + " ", style="dim")


@dataclass
class _Cells:
    """The metric cells of one line; None: a blank cell (not a column of this line)."""

    util: float | None = None
    util_text: str | None = None
    mem_percent: float | None = None
    mem_text: str | None = None
    temp: str | None = None
    temp_hot: bool = False
    power: str | None = None


def _metrics(cells: _Cells, lay: Layout) -> Text:
    line = Text()
    line += _bar(cells.util, lay.bar, blank=cells.util_text in (None, "-"))
    line.append(f"{cells.util_text or '':>4}  ")
    line += _bar(cells.mem_percent, lay.bar, memory=True, blank=cells.mem_text in (None, "-"))
    line.append(f"{cells.mem_text or '':>11}  ")
    line.append(f"{cells.temp or '':>4}  ", style="red" if cells.temp_hot else "")
    if lay.power:
        line.append(f"{cells.power or '':>9}  ")
    return line


def _gpu_cells(gpu: GpuNow, fresh: bool) -> _Cells:
    s = gpu.sample if fresh else None
    if s is None:
        return _Cells(util_text="-", mem_text="-", temp="-", power="-")
    total = s.memory_total_bytes or gpu.memory_bytes
    used = s.memory_used_bytes
    return _Cells(
        util=s.utilization_percent,
        util_text=percent(s.utilization_percent),
        mem_percent=None if used is None or not total else 100 * used / total,
        mem_text=gib_pair(used, total),
        temp=temperature(s.temperature_celsius),
        temp_hot=(s.temperature_celsius or 0) >= 85,
        power=power(s.power_watts, s.power_limit_watts),
    )


def _holders(gpu: GpuNow, node: NodeNow, gangs: set[int], failed: bool) -> Text:
    text = Text(", ".join(job_label(j, gangs) for j in gpu.jobs))
    if gpu.unmanaged:
        text.append(", " if gpu.jobs else "")
        text.append(f"UNMANAGED {gpu.unmanaged}", style=WARN)
    if not text.plain:
        # "free" only where a job could start now: a ready node, a GPU that answers.
        usable = node.state == "ready" and not failed
        text = Text("free", style="green") if usable else Text("-", style="dim")
    return text


def _instance_holders(instance: MigSample, gpu: GpuNow, gangs: set[int]) -> Text:
    jobs = {j.id: j for j in gpu.jobs}
    text = Text()
    seen: set[str] = set()
    for p in instance.processes:
        if p.owner == "job" and p.job_id is not None:
            job = jobs.get(p.job_id)
            label, style = (job_label(job, gangs) if job else f"job {p.job_id}"), ""
        else:
            who = unmanaged_label(p)
            if who is None:
                continue
            label, style = f"UNMANAGED {who}", WARN
        if label not in seen:
            text.append(", " if seen else "")
            text.append(label, style=style)
            seen.add(label)
    return text if seen else Text("idle", style="dim")


def _node_header(node: NodeNow, now: datetime, fresh: bool, lay: Layout) -> Text:
    line = Text()  # a style given to Text() would colour the whole line
    line.append(node.name, style="bold")
    line.append("  ")
    line.append(node.state, style=STATE_STYLES.get(node.state, ""))
    line.append(f"  pool {node.pool}")
    if node.simulated:
        line.append("  SIMULATED", style="magenta")
    if not fresh:
        line.append(f"  {no_data(node, now)}", style="red")
        return line
    host = node.host
    if host is None:
        line.append("  CPU n/a  RAM n/a")
    else:
        line.append(f"  CPU {percent(host.cpu_percent)}")
        if host.load1 is not None and lay.power:
            line.append(f"  load {host.load1:.1f}")
        line.append(f"  RAM {gib_pair(host.memory_used_bytes, host.memory_total_bytes)}")
    line.append(f"  sampled {age(node.sampled_at, now)} ago", style="dim")
    return line


def _model_width(cluster: ClusterNow, lay: Layout) -> int:
    """As wide as the longest short model (or ``└ MIG <profile>``), at most ``lay.model``."""
    widths = [len(short_model(g.model)) for n in cluster.nodes for g in n.gpus]
    widths += [
        len(f"└ MIG {i.profile}")
        for n in cluster.nodes
        for g in n.gpus
        if g.sample is not None
        for i in g.sample.mig
    ]
    return min(lay.model, max(widths, default=4))


def _mig_label(profile: str | None, width: int) -> str:
    """``└ MIG 1g.10gb``, or ``└ 1g.10gb`` where that does not fit."""
    label = f"MIG {profile or '?'}"
    if len(label) > width - 2:
        label = profile or "?"
    return "└ " + _fit(label, width - 2)


def _gpu_lines(
    node: NodeNow, now: datetime, lay: Layout, model_w: int, gangs: set[int]
) -> list[Text]:
    fresh = is_fresh(node, now)
    idx_w = max((len(str(g.index)) for g in node.gpus), default=1)
    lines = []
    for gpu in sorted(node.gpus, key=lambda g: g.index):
        line = Text("  ")
        line.append(f"{gpu.index:>{idx_w}} ", style="bold")
        line.append(f"{_fit(short_model(gpu.model), model_w):<{model_w}}  ")
        sample = gpu.sample if fresh else None
        if sample is not None and sample.error:
            line.append(f"error: {sample.error}", style="bold red")
            line.append("  ")
        else:
            line += _metrics(_gpu_cells(gpu, fresh), lay)
        line += _holders(gpu, node, gangs, failed=bool(sample and sample.error))
        lines.append(line)
        for instance in sample.mig if sample is not None and not sample.error else []:
            # In the model column, so the instances' memory lines up with the GPU's.
            mig = Text(" " * (3 + idx_w))
            mig.append(f"{_mig_label(instance.profile, model_w):<{model_w}}", style="cyan")
            mig.append("  ")
            total = instance.memory_total_bytes
            used = instance.memory_used_bytes
            cells = _Cells(
                util=instance.utilization_percent,
                util_text=percent(instance.utilization_percent),
                mem_percent=None if used is None or not total else 100 * used / total,
                mem_text=gib_pair(used, total),
            )
            mig += _metrics(cells, lay)
            mig += _instance_holders(instance, gpu, gangs)
            lines.append(mig)
    return lines


def render_top(
    cluster: ClusterNow,
    now: datetime,
    width: int | None = None,
    *,
    status: str | None = None,
    problem: str | None = None,
) -> list[Text]:
    """One frame of `corral top`: a summary line, then per node a header and a line per
    GPU (MIG instances indented below it).

    ``width``: the terminal's columns (lines are cut to fit, bars dropped when narrow);
    None renders plain text for a pipe (no bars, nothing cut). ``status`` is added to
    the summary (e.g. the refresh interval); ``problem`` (e.g. the server is
    unreachable) is shown in red under it.
    """
    lay = layout_for(width)
    model_w = _model_width(cluster, lay)
    gangs = gang_jobs(cluster)
    gpus = [g for n in cluster.nodes for g in n.gpus]
    busy = sum(1 for g in gpus if g.jobs or g.unmanaged)
    unmanaged = sum(1 for g in gpus if g.unmanaged)
    head = Text()
    head.append(f"{len(cluster.nodes)} node{'s' * (len(cluster.nodes) != 1)}", style="bold")
    head.append(f"  {busy} of {len(gpus)} GPUs in use", style="bold")
    if unmanaged:
        head.append(f" ({unmanaged} unmanaged)", style=WARN)
    head.append(f"  {clock_time(cluster.at)}", style="dim")
    if status:
        head.append(f"  {status}", style="dim")
    lines = [head]
    if problem:
        lines.append(Text(problem, style="bold red"))
    for node in cluster.nodes:
        lines.append(Text())
        lines.append(_node_header(node, now, is_fresh(node, now), lay))
        lines.extend(_gpu_lines(node, now, lay, model_w, gangs))
    if not cluster.nodes:
        lines.append(Text("No nodes (start an agent on a GPU server: see `corral join-token`)."))
    for line in lines:
        line.no_wrap = True
        if width is not None:
            line.truncate(width, overflow="ellipsis")
    return lines


def plain(lines: Sequence[Text]) -> str:
    """A frame as plain text (no escape codes), lines without trailing blanks."""
    return "\n".join(line.plain.rstrip() for line in lines)


# ---------------------------------------------------------------- what is free


FREE_COLUMNS = (
    Column("NODE"),
    Column("POOL"),
    Column("FREE GPUS"),
    Column("MODEL"),
    Column("MEMORY"),
    Column("SHARED / MIG"),
)


def free_row(node: NodeFree) -> list[str]:
    """``gpu-01 default 2 (4,5) A100-80GB 80GiB "GPU 3: 40GiB free (shared, 1 job)"``."""
    count = len(node.free_gpus)
    gpus = f"{count} ({','.join(map(str, node.free_gpus))})" if count else "0"
    room = []
    for s in node.shared:
        free = "room unknown" if s.free_memory_bytes is None else format_bytes(s.free_memory_bytes)
        jobs = f"{s.jobs} job{'s' * (s.jobs != 1)}"
        room.append(f"GPU {s.gpu}: {free} free (shared, {jobs})")
    by_gpu: dict[int, list[str]] = {}
    for m in node.mig:
        by_gpu.setdefault(m.gpu, []).append(f"{m.free}x {m.profile}")
    room.extend(f"GPU {g}: MIG {', '.join(p)} free" for g, p in by_gpu.items())
    memory = ",".join(dict.fromkeys(format_bytes(b) for b in node.free_gpu_memory_bytes))
    return [
        node.node,
        node.pool,
        gpus,
        ", ".join(node.models) or "-",
        memory or "-",
        "; ".join(room) or "-",
    ]


def free_footer(report: FreeReport) -> list[str]:
    """Totals, how shared room was derived, and the nodes left out."""
    with_free = sum(1 for n in report.nodes if n.free_gpus)
    lines = [
        f"Total: {report.free_gpus} free GPU{'s' * (report.free_gpus != 1)}"
        f" on {with_free} node{'s' * (with_free != 1)}"
    ]
    shared = sum(len(n.shared) for n in report.nodes)
    if shared:
        lines[0] += f"; {shared} shared GPU{'s' * (shared != 1)} with room"
        lines.append(
            "Shared room is derived: GPU memory minus the jobs' shares (0.5 of 80GiB: 40GiB)."
        )
    instances = sum(m.free for n in report.nodes for m in n.mig)
    if instances:
        lines[0] += f"; {instances} free MIG instance{'s' * (instances != 1)}"
    if report.not_ready:
        skipped = ", ".join(f"{name} ({state})" for name, state in report.not_ready.items())
        lines.append(f"Not ready, not counted: {skipped}")
    return lines


# ---------------------------------------------------------------- commands


def fetch_cluster(api: ApiClient, names: Sequence[str] = ()) -> ClusterNow:
    """``GET /metrics/now``, keeping only the nodes named (all when none are)."""
    cluster = parse(ClusterNow, api.get("/metrics/now"))
    if not names:
        return cluster
    known = {n.name for n in cluster.nodes}
    missing = [name for name in names if name not in known]
    if missing:
        raise NotFound(f"no node named {', '.join(missing)}")
    return cluster.model_copy(update={"nodes": [n for n in cluster.nodes if n.name in names]})


def _check_interval(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value < MIN_INTERVAL:
        raise click.BadParameter(f"must be at least {MIN_INTERVAL:g}s")
    return value


def _watch(api: ApiClient, names: Sequence[str], interval: float) -> None:
    """Redraw in place until Ctrl-C; a lost server shows in red and is retried."""
    console = Console()
    cluster = fetch_cluster(api, names)
    problem = None
    status = f"every {interval:g}s, Ctrl-C to quit"
    with Live(console=console, auto_refresh=False) as live:
        while True:
            frame = render_top(cluster, cluster.at, console.width, status=status, problem=problem)
            live.update(Group(*frame), refresh=True)
            time.sleep(interval)
            try:
                cluster, problem = fetch_cluster(api, names), None
            except Unavailable as exc:
                problem = f"retrying: {exc} (showing {clock_time(cluster.at)})"


def _batch(api: ApiClient, names: Sequence[str], interval: float) -> None:
    """Into a pipe: a plain frame every ``interval`` seconds, a blank line between."""
    while True:
        cluster = fetch_cluster(api, names)
        click.echo(plain(render_top(cluster, cluster.at)) + "\n")
        sys.stdout.flush()
        time.sleep(interval)


@click.command()
@click.option(
    "--interval",
    type=DURATION,
    default=2.0,
    show_default="2s",
    metavar="DURATION",
    callback=_check_interval,
    help="Time between refreshes (e.g. 1s, 500ms; a bare number is seconds).",
)
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts).")
@click.option(
    "--node",
    "names",
    type=NODE_NAME,
    multiple=True,
    metavar="NAME",
    help="Show only this node (repeatable).",
)
@output_option
@pass_state
def top(state: CliState, interval: float, once: bool, names: tuple[str, ...], output: str) -> None:
    """Watch every node and GPU live, one line per GPU.

    Per node: state, pool, CPU, RAM and how old its newest sample is ("no data" when
    older than 10s). Per GPU: utilization, memory, temperature, power, and who holds
    it: jobs with their user (and share, MIG profile or gang rank), and use outside
    Corral in yellow as UNMANAGED. MIG instances are indented under their GPU. A value
    a GPU cannot report shows as n/a.

    Refreshes in place until Ctrl-C. Into a pipe it prints plain frames one after
    another; --once prints one. -o json/yaml prints the API's ClusterNow once.
    """
    with state.client() as api:
        if output != "table":
            print_data(fetch_cluster(api, names).model_dump(mode="json"), output)
            return
        try:
            if once:
                cluster = fetch_cluster(api, names)
                if stdout_is_terminal():
                    console = Console()
                    console.print(Group(*render_top(cluster, cluster.at, console.width)))
                else:
                    click.echo(plain(render_top(cluster, cluster.at)))
            elif stdout_is_terminal():
                _watch(api, names, interval)
            else:
                _batch(api, names, interval)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(0) from None  # quitting is what was asked
        except BrokenPipeError:
            _silence_stdout()  # `corral top | head`: the reader left, that is fine
            raise click.exceptions.Exit(0) from None


@click.command()
@output_option
@pass_state
def free(state: CliState, output: str) -> None:
    """Show which GPUs can be had right now, per node.

    A GPU is free when its node is ready and it has no job and no use outside Corral.
    Shared GPUs (holding fractional jobs) are listed with the memory left, derived as
    GPU memory minus each job's share; MIG instances free are counted by profile.
    """
    with state.client() as api:
        report = free_report(fetch_cluster(api))
    if output != "table":
        print_data(report.model_dump(mode="json"), output)
        return
    if report.nodes:
        print_table(FREE_COLUMNS, [free_row(n) for n in report.nodes])
        click.echo()
    for line in free_footer(report):
        click.echo(line)


COMMANDS: Sequence[click.Command] = (top, free)
