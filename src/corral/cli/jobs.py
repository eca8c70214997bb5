"""The job commands: ``submit``, ``list``, ``get``, ``logs`` and ``delete``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click
from pydantic import ValidationError

from corral.cli.config import CliState, pass_state
from corral.cli.job_views import print_job, print_jobs
from corral.cli.output import output_option, parse, print_data, print_empty, print_table
from corral.cli.params import (
    DURATION,
    JOB_NAME,
    KEY_VALUE,
    MEMORY,
    POOL_NAME,
    USER_NAME,
    VOLUME,
    project_option,
)
from corral.client import ApiClient
from corral.core.errors import CorralError, NotFound
from corral.core.jobview import asked_text
from corral.core.quantities import format_duration
from corral.core.schemas import (
    JobDetail,
    JobList,
    JobOut,
    JobSubmit,
    QueueOut,
    VolumeRequest,
)
from corral.core.states import JobKind, JobState
from corral.core.tunnel import port_path

_RESOLVE_HELP = "Project of the job. Needed only when the name exists in several of your projects."

# Which option to blame when the client-side copy of the server's checks refuses a field.
_SUBMIT_FIELD_OPTIONS = {
    "name": "NAME",
    "project": "--project",
    "gpus": "--gpus",
    "gpu_memory_bytes": "--gpu-memory",
    "mig_profile": "--mig",
    "workers": "--workers",
    "cpus": "--cpus",
    "memory_bytes": "--memory",
    "command": "COMMAND",
    "env": "--env",
    "workdir": "--workdir",
    "grace_seconds": "--grace-period",
    "priority": "--priority",
    "pool": "--pool",
    "image": "--image",
    "shm_size_bytes": "--shm-size",
    "volumes": "--volume",
    "run_as_root": "--root",
    "ports": "--port",
}

# What an interactive job runs when no command is given: nothing, until it is deleted,
# while its owner works in it with `corral bash` (any sh and sleep will do, busybox too).
INTERACTIVE_IDLE_COMMAND = ("/bin/sh", "-c", "while :; do sleep 3600; done")


class _CommandAfterDashes(click.Command):
    """A command whose trailing ``COMMAND [ARGS]...`` belongs to the job, not to Corral.

    Click parses options anywhere on the line, so in ``corral submit x python train.py -p 5``
    the ``-p 5`` would silently become Corral's ``--project``. This class refuses any
    line where the job's command is not exactly what follows ``--`` (or, without ``--``,
    the unbroken tail of the line), and explains ``--`` when an option is unknown.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        raw = list(args)
        try:
            rest = super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            raise click.UsageError(
                f"{exc.format_message()} If it is an option of the job's command, put the "
                "command after `--`: corral submit NAME [OPTIONS] -- COMMAND [ARGS]...",
                ctx,
            ) from exc
        command = list(ctx.params.get("command") or ())
        tail = raw[raw.index("--") + 1 :] if "--" in raw else raw[len(raw) - len(command) :]
        if command and command != tail:
            raise click.UsageError(
                "options after the job's command are ambiguous: put the whole command "
                "after `--`, e.g. corral submit NAME -g 1 -- python train.py --lr 0.1",
                ctx,
            )
        return rest


@click.command(
    cls=_CommandAfterDashes,
    epilog="""\b
Examples:
  corral submit train-1 -p team-a -g 2 -- python train.py --epochs 10
  corral submit prep -c 8 --memory 32GiB -e DATA=/scratch/d -- ./prepare.sh
  corral submit dev --interactive -g 1                   # then: corral bash dev
  corral submit nb --interactive -g 1 --port 8888 -- sh -c 'jupyter lab --no-browser \\
      --ip=127.0.0.1 --port=8888 --ServerApp.base_url=/jobs/$CORRAL_JOB_ID/ports/8888/'
  corral submit small -g 0.5 -- python eval.py          # half of one shared GPU
  corral submit infer --gpu-memory 20GiB -- ./serve.sh   # 20 GiB of one shared GPU
  corral submit tiny --mig 1g.10gb -- python test.py     # one MIG instance
  corral submit pt --image nvcr.io/nvidia/pytorch:24.01-py3 -g 2 --memory 64GiB \\
      --large-shm --volume datasets:/data:ro -- python train.py
  corral submit big -g 8 --workers 4 -- sh -c 'torchrun --nnodes $CORRAL_WORLD_SIZE \\
      --node-rank $CORRAL_WORKER_RANK --nproc-per-node 8 \\
      --master-addr $MASTER_ADDR --master-port $MASTER_PORT train.py'
""",
)
@click.argument("name", type=JOB_NAME)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@project_option("Project to run in (default: the current project, else 'default').")
@click.option(
    "-g",
    "--gpus",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="GPUs per worker: whole (1, 2, 8), or a fraction below 1 of one shared GPU (0.5).",
)
@click.option(
    "--gpu-memory",
    type=MEMORY,
    help="Instead of --gpus: this much memory of one shared GPU, e.g. 20GiB.",
)
@click.option(
    "--mig",
    "mig_profile",
    metavar="PROFILE",
    help="Instead of --gpus: one MIG instance of this profile, e.g. 1g.10gb.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Gang size: this many workers, each with --gpus whole GPUs, all started together "
    "or none. Each gets CORRAL_WORKER_RANK, CORRAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.",
)
@click.option(
    "-c", "--cpus", type=click.FloatRange(min=0, min_open=True), help="CPU cores (e.g. 4, 0.5)."
)
@click.option("--memory", type=MEMORY, help="Host memory, e.g. 16GiB or 512MiB.")
@click.option(
    "-e",
    "--env",
    type=KEY_VALUE,
    multiple=True,
    metavar="KEY=VALUE",
    help="Environment variable for the job (repeatable).",
)
@click.option("--workdir", metavar="DIR", help="Absolute directory on the node to run in.")
@click.option(
    "--kind",
    type=click.Choice([k.value for k in JobKind], case_sensitive=False),
    help="train (unattended, may be preempted; the default) or interactive.",
)
@click.option(
    "-i",
    "--interactive",
    is_flag=True,
    help="Same as --kind interactive. Without a COMMAND the job just waits, for "
    "`corral bash` and `corral exec`, until it is deleted.",
)
@click.option(
    "--port",
    "ports",
    type=click.IntRange(1, 65535),
    multiple=True,
    metavar="PORT",
    help="Serve this TCP port of the job (on its node's 127.0.0.1) at the server's "
    "/jobs/ID/ports/PORT/ URL, to you and admins (repeatable).",
)
@click.option(
    "--grace-period",
    type=DURATION,
    metavar="DURATION",
    help="Time between SIGTERM and SIGKILL when the job is stopped, e.g. 30s.",
)
@click.option(
    "--priority",
    type=click.IntRange(-1000, 1000),
    default=0,
    show_default=True,
    help="Priority within the project: higher starts first and is preempted last.",
)
@click.option("--pool", type=POOL_NAME, help="Node pool the job must run in.")
@click.option(
    "--image",
    metavar="IMAGE",
    help="Run the job as a container of this Docker image (on nodes with Docker), as "
    "your own UID/GID, with its GPUs passed by UUID. Without a COMMAND it runs the "
    "image's own.",
)
@click.option(
    "--volume",
    "volumes",
    type=VOLUME,
    multiple=True,
    metavar="NAME:/PATH[:ro]",
    help="Mount a volume an admin defined (`corral volume list`) at PATH in the container "
    "(repeatable); /HOST/PATH:/PATH where the server allows host paths.",
)
@click.option("--shm-size", type=MEMORY, help="Size of /dev/shm in the container, e.g. 8GiB.")
@click.option(
    "--large-shm",
    is_flag=True,
    help="Shared memory (the container's /dev/shm) as large as the job's --memory: what "
    "PyTorch data loaders want.",
)
@click.option(
    "--root",
    "run_as_root",
    is_flag=True,
    help="Run the container as its image's user (often root), where the server allows it.",
)
@output_option
@pass_state
def submit(
    state: CliState,
    name: str,
    command: tuple[str, ...],
    project: str | None,
    gpus: float,
    gpu_memory: int | None,
    mig_profile: str | None,
    workers: int,
    cpus: float | None,
    memory: int | None,
    env: tuple[tuple[str, str], ...],
    workdir: str | None,
    kind: str | None,
    interactive: bool,
    ports: tuple[int, ...],
    grace_period: float | None,
    priority: int,
    pool: str | None,
    image: str | None,
    volumes: tuple[dict[str, Any], ...],
    shm_size: int | None,
    large_shm: bool,
    run_as_root: bool,
    output: str,
) -> None:
    """Submit a job that runs a command on the cluster.

    Job NAME runs COMMAND on a node with the resources asked for. Put the command
    after `--` so that its own options are not read as Corral's. The job waits in the
    queue (state pending) until a node has the GPUs free; `corral list` shows why it
    waits. Names are unique within a project.
    """
    if not command and (interactive or kind == JobKind.INTERACTIVE.value):
        command = INTERACTIVE_IDLE_COMMAND
    if not command and image is None:
        raise click.UsageError(
            "missing the command to run: corral submit NAME [OPTIONS] -- COMMAND [ARGS]... "
            "(a container job may leave it out to run its image's own command)"
        )
    if interactive and kind not in (None, JobKind.INTERACTIVE.value):
        raise click.BadOptionUsage("kind", "--interactive conflicts with --kind train")
    if large_shm:
        if shm_size is not None:
            raise click.BadOptionUsage("large_shm", "give --large-shm or --shm-size, not both")
        if memory is None:
            raise click.BadOptionUsage(
                "large_shm",
                "--large-shm makes /dev/shm as large as the job's memory: give --memory too "
                "(shared memory counts against it), or give --shm-size",
            )
        shm_size = memory
    try:
        request = JobSubmit(
            name=name,
            project=project or state.default_project,
            kind=JobKind.INTERACTIVE if interactive else JobKind(kind or JobKind.TRAIN),
            gpus=gpus,
            gpu_memory_bytes=gpu_memory,
            mig_profile=mig_profile,
            workers=workers,
            cpus=cpus,
            memory_bytes=memory,
            command=list(command),
            env=dict(env),
            workdir=workdir,
            grace_seconds=grace_period,
            priority=priority,
            pool=pool,
            image=image,
            volumes=[VolumeRequest(**v) for v in volumes],
            shm_size_bytes=shm_size,
            run_as_root=run_as_root,
            ports=list(ports),
        )
    except ValidationError as exc:
        # The same checks the server makes, run here so a mistake costs no round trip.
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        field = str(first["loc"][0]) if first["loc"] else ""
        if not field and ": " in message:  # a check across fields names the one it blames
            field, message = message.split(": ", 1)
        raise click.BadParameter(
            message, param_hint=_SUBMIT_FIELD_OPTIONS.get(field, field or None)
        ) from exc
    with state.client() as api:
        data = api.post("/jobs", request.model_dump(mode="json", exclude_none=True))
    if output != "table":
        print_data(data, output)
        return
    job = parse(JobOut, data)
    click.echo(f"Job {job.name} submitted to project {job.project}.")
    click.echo(f"State: {job.state.value}" + (f" ({job.reason})" if job.reason else ""))
    click.echo(f"Follow its output with: corral logs -f {job.name} -p {job.project}")
    if job.kind is JobKind.INTERACTIVE:
        click.echo(f"Open a shell in it once it runs: corral bash {job.name} -p {job.project}")
    for port in job.ports:
        click.echo(f"Port {port}: {state.server}{port_path(job.id, port)}")
    if job.ports:
        path, port = port_path(job.id, job.ports[0]), job.ports[0]
        click.echo(
            "  The program sees that whole path: start it with that base URL (Jupyter: "
            f"--ServerApp.base_url={path}, TensorBoard: --path_prefix={path.rstrip('/')}), "
            f"or reach it with: corral port-forward {job.name} -p {job.project} {port}:{port}"
        )


@click.command("list")
@project_option("Show only this project's jobs (default: every project you can see).")
@click.option("-u", "--user", type=USER_NAME, help="Show only this user's jobs.")
@click.option(
    "-s",
    "--state",
    "state_filter",
    type=click.Choice([s.value for s in JobState], case_sensitive=False),
    help="Show only jobs in this state.",
)
@click.option("-A", "--all", "include_deleted", is_flag=True, help="Include deleted jobs.")
@output_option
@pass_state
def list_jobs(
    state: CliState,
    project: str | None,
    user: str | None,
    state_filter: str | None,
    include_deleted: bool,
    output: str,
) -> None:
    """List jobs, and why pending or failed ones are so.

    Shows each job's state, node, GPUs (and which ones), age, and the reason why a
    pending job waits or a failed one failed.

    \b
    Examples:
      corral list                      # every job you can see, in all your projects
      corral list -p team-a -s pending
      corral list -o json | jq -r '.[] | select(.state == "running") | .name'
    """
    with state.client() as api:
        data = api.get(
            "/jobs",
            project=project,
            user=user,
            state=state_filter,
            all="true" if include_deleted else "false",
        )
    jobs = parse(JobList, data).jobs
    if output != "table":
        print_data(data["jobs"], output)
    elif not jobs:
        print_empty("jobs")
    else:
        print_jobs(jobs, state.clock())


def resolve_project(state: CliState, api: ApiClient, name: str, project: str | None) -> str:
    """The project of job ``name``: ``project`` if given, else found among visible jobs.

    A name that exists in one project resolves to it; in several, to the current project
    (`corral project set`) if it is one of them, else it is an error asking for
    ``--project``. Deleted jobs count only when no live job has the name, so that
    `corral get` still shows a job after `corral delete`.
    """
    if project:
        return project
    projects = _projects_with_job(api, name, include_deleted=False) or _projects_with_job(
        api, name, include_deleted=True
    )
    if not projects:
        raise NotFound(f"job {name!r} not found")
    if len(projects) == 1:
        return projects[0]
    current = state.current_project
    if current is not None and current in projects:
        return current
    raise CorralError(f"job {name} exists in projects {', '.join(projects)}: use --project")


def _projects_with_job(api: ApiClient, name: str, *, include_deleted: bool) -> list[str]:
    data = api.get("/jobs", name=name, all="true" if include_deleted else "false")
    # Filter again here: the name filter is exact on the server, but a looser server
    # must not make us act on the wrong job.
    return sorted({job.project for job in parse(JobList, data).jobs if job.name == name})


@click.command()
@click.argument("name", type=JOB_NAME)
@project_option(_RESOLVE_HELP)
@output_option
@pass_state
def get(state: CliState, name: str, project: str | None, output: str) -> None:
    """Show a job's details and events.

    Everything about job NAME: resources, GPUs, times, exit code and its events.

    \b
    Examples:
      corral get train-1
      corral get train-1 -p team-a -o yaml
    """
    with state.client() as api:
        project = resolve_project(state, api, name, project)
        data = api.get(f"/jobs/{project}/{name}")
    if output != "table":
        print_data(data, output)
    else:
        print_job(parse(JobDetail, data), state.clock(), server=state.server)


@click.command()
@click.argument("name", type=JOB_NAME)
@project_option(_RESOLVE_HELP)
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output until the job ends.")
@click.option(
    "--rank",
    type=click.IntRange(min=0),
    metavar="N",
    default=0,
    show_default=True,
    help="Which worker of a gang (a job with --workers) to show, 0 being the first.",
)
@pass_state
def logs(state: CliState, name: str, project: str | None, follow: bool, rank: int) -> None:
    """Print a job's output (stdout and stderr).

    Each worker of a gang has its own output; --rank picks one.

    \b
    Examples:
      corral logs train-1
      corral logs -f train-1 -p team-a     # Ctrl-C stops following, not the job
      corral logs big --rank 3             # the output of worker 3 of gang big
    """
    out = sys.stdout.buffer
    with state.client() as api:
        project = resolve_project(state, api, name, project)
        params = {"follow": "true" if follow else "false", "rank": str(rank)}
        try:
            with api.stream(f"/jobs/{project}/{name}/logs", params=params) as chunks:
                for chunk in chunks:
                    out.write(chunk)
                    out.flush()  # show each line as it comes, even into a pipe
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None  # quietly: stopping is what was asked
        except BrokenPipeError:
            _silence_stdout()  # `corral logs x | head`: the reader left, that is fine
            raise click.exceptions.Exit(0) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail again."""
    try:
        target = sys.stdout.fileno()
    except (OSError, ValueError):
        return  # not a real file (tests): nothing will flush it at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, target)
    os.close(devnull)


@click.command()
@click.argument("name", type=JOB_NAME)
@project_option(_RESOLVE_HELP)
@pass_state
def delete(state: CliState, name: str, project: str | None) -> None:
    """Delete a job, stopping it first if it runs.

    A running job gets SIGTERM, then SIGKILL after its grace period. Its record and
    output stay visible with `corral list -A` and `corral get`.
    """
    with state.client() as api:
        project = resolve_project(state, api, name, project)
        job = parse(JobOut, api.delete(f"/jobs/{project}/{name}"))
    if job.state is JobState.STOPPING:
        grace = format_duration(job.grace_seconds)
        click.echo(f"Job {job.name} is stopping (SIGTERM, then SIGKILL after {grace}).")
    else:
        click.echo(f"Job {job.name} deleted.")


@click.command()
@project_option("Show only this project's pending jobs.")
@output_option
@pass_state
def queue(state: CliState, project: str | None, output: str) -> None:
    """Show the pending queue in scheduling order, and why each job waits.

    The order is the one the scheduler used in its last cycle: projects furthest below
    their fair share first, then (inside a project) interactive before train, higher
    priority, older.
    """
    with state.client() as api:
        data = api.get("/queue", project=project)
    if output != "table":
        print_data(data["jobs"], output)
        return
    entries = parse(QueueOut, data).jobs
    if not entries:
        click.echo("No jobs are waiting.")
        return
    print_table(
        ("#", "NAME", "PROJECT", "USER", "KIND", "PRIORITY", "GPUS", "WAITING", "REASON"),
        [
            [
                str(e.position),
                e.name,
                e.project,
                e.user,
                e.kind.value,
                str(e.priority),
                asked_text(e),
                format_duration(e.waiting_seconds),
                e.reason or "-",
            ]
            for e in entries
        ],
    )


COMMANDS: Sequence[click.Command] = (submit, list_jobs, queue, get, logs, delete)
