"""``corral server`` and ``corral agent``: the two long-running processes of a cluster.

Both commands only turn flags into their settings object and hand over. The server and
agent packages are imported inside the commands: they pull in FastAPI, SQLAlchemy,
uvicorn and NVML, which client commands such as `corral list` must not pay for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import click

from corral.agent.config import AgentConfig
from corral.cli.params import DURATION, KEY_VALUE, NODE_NAME, POOL_NAME, SERVER_URL
from corral.core.names import NAME_RE
from corral.core.quantities import format_duration
from corral.server.settings import ServerSettings

JOIN_TOKEN_ENV = "CORRAL_JOIN_TOKEN"  # noqa: S105 (a variable name, not a secret)
DATABASE_URL_ENV = "CORRAL_DATABASE_URL"

# Same rule as `UserCreate.unix_user`: what useradd accepts by default.
UNIX_ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

_SERVER_DEFAULTS = ServerSettings()
_AGENT_DEFAULTS = AgentConfig(server="")


@click.command(
    epilog="""\b
Examples:
  corral server                                   # SQLite in $CORRAL_HOME/server
  corral server --host 0.0.0.0 --port 8420        # reachable by agents on other hosts
  CORRAL_DATABASE_URL=postgresql+psycopg://corral@db/corral corral server
""",
)
@click.option(
    "--host",
    default=_SERVER_DEFAULTS.host,
    show_default=True,
    help="Address to listen on; 0.0.0.0 lets agents on other machines reach the server.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=_SERVER_DEFAULTS.port,
    show_default=True,
    help="TCP port of the API, dashboard and /metrics.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Database (SQLite), job logs and the first admin token. [default: $CORRAL_HOME/server]",
)
@click.option(
    "--database-url",
    envvar=DATABASE_URL_ENV,
    show_envvar=True,
    metavar="URL",
    help="SQLAlchemy URL of the database, e.g. postgresql+psycopg://user@host/db "
    "[default: SQLite in the data directory]",
)
@click.option(
    "--node-not-ready-after",
    type=DURATION,
    default=_SERVER_DEFAULTS.node_not_ready_after,
    show_default=format_duration(_SERVER_DEFAULTS.node_not_ready_after),
    metavar="DURATION",
    help="Heartbeat silence after which a node gets no new jobs (its jobs keep running).",
)
@click.option(
    "--node-down-after",
    type=DURATION,
    default=_SERVER_DEFAULTS.node_down_after,
    show_default=format_duration(_SERVER_DEFAULTS.node_down_after),
    metavar="DURATION",
    help="Heartbeat silence after which a node is down and its jobs are lost.",
)
@click.option(
    "--fair-share-half-life",
    type=DURATION,
    metavar="DURATION",
    help="Let recent GPU usage break ties between projects, decaying with this half-life "
    "(e.g. 7d), as Slurm's fair-share does. [default: off]",
)
@click.option(
    "--metrics-database-url",
    metavar="URL",
    help="Where monitoring history goes. [default: metrics.db in the data directory with "
    "SQLite; the main database with PostgreSQL]",
)
@click.option(
    "--metrics-raw-retention",
    type=DURATION,
    metavar="DURATION",
    default=_SERVER_DEFAULTS.metrics_raw_retention,
    show_default=format_duration(_SERVER_DEFAULTS.metrics_raw_retention),
    help="How long raw (1-second) samples are kept.",
)
@click.option(
    "--metrics-minute-retention",
    type=DURATION,
    metavar="DURATION",
    default=_SERVER_DEFAULTS.metrics_minute_retention,
    show_default=format_duration(_SERVER_DEFAULTS.metrics_minute_retention),
    help="How long 1-minute averages are kept.",
)
@click.option(
    "--metrics-hour-retention",
    type=DURATION,
    metavar="DURATION",
    default=_SERVER_DEFAULTS.metrics_hour_retention,
    show_default=format_duration(_SERVER_DEFAULTS.metrics_hour_retention),
    help="How long 1-hour averages are kept.",
)
@click.option(
    "--metrics-require-token",
    is_flag=True,
    help="Make /metrics (Prometheus) require an API token, as the rest of the API does. "
    "[default: open, as node_exporter and dcgm-exporter are]",
)
@click.option(
    "--allow-host-path-volumes",
    is_flag=True,
    help="Let container jobs mount any host path (--volume /host/path:/path), not only the "
    "volumes an admin defined with `corral volume create`.",
)
@click.option(
    "--allow-root-containers",
    is_flag=True,
    help="Let container jobs run as their image's user, often root (corral submit --root), "
    "instead of their owner's UID/GID.",
)
def server(
    host: str,
    port: int,
    data_dir: Path | None,
    database_url: str | None,
    node_not_ready_after: float,
    node_down_after: float,
    fair_share_half_life: float | None,
    metrics_database_url: str | None,
    metrics_raw_retention: float,
    metrics_minute_retention: float,
    metrics_hour_retention: float,
    metrics_require_token: bool,
    allow_host_path_volumes: bool,
    allow_root_containers: bool,
) -> None:
    """Run the Corral server.

    It serves the API and runs the scheduler and the node health checks. On its
    first start it creates an admin user and writes the admin's token and a join
    token for agents to files in the data directory (readable by you only).
    """
    if node_down_after <= node_not_ready_after:
        raise click.BadParameter(
            "must be longer than --node-not-ready-after", param_hint="--node-down-after"
        )
    settings = ServerSettings(
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        node_not_ready_after=node_not_ready_after,
        node_down_after=node_down_after,
        usage_half_life=fair_share_half_life,
        metrics_database_url=metrics_database_url,
        metrics_raw_retention=metrics_raw_retention,
        metrics_minute_retention=metrics_minute_retention,
        metrics_hour_retention=metrics_hour_retention,
        metrics_require_token=metrics_require_token,
        allow_host_path_volumes=allow_host_path_volumes,
        allow_root_containers=allow_root_containers,
    )
    from corral.server.main import serve  # here, not at the top: see the module docstring

    serve(settings)


def check_user_map_entry(user: str, account: str) -> str | None:
    """Why ``user → account`` is not a valid mapping, or None when it is."""
    if user != "*" and not NAME_RE.match(user):
        return f"{user!r} is not a Corral user name (or '*' for everyone)"
    if not UNIX_ACCOUNT_RE.match(account):
        return f"{account!r} is not a Unix account name"
    return None


def read_user_map_file(path: Path) -> dict[str, str]:
    """Parse lines of ``corral_user unix_account`` ('*' = everyone, '#' starts a comment).

    Raises `click.BadParameter` naming the file and line of the first bad line.
    """
    mapping: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc}", param_hint="--user-map-file"
        ) from exc
    for lineno, line in enumerate(lines, start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        problem = (
            check_user_map_entry(words[0], words[1])
            if len(words) == 2
            else "expected two words: CORRAL_USER UNIX_ACCOUNT"
        )
        if problem:
            raise click.BadParameter(f"{path}:{lineno}: {problem}", param_hint="--user-map-file")
        mapping[words[0]] = words[1]
    return mapping


@click.command(
    epilog="""\b
Examples:
  corral agent --server http://gpu-head:8420 --join-token TOKEN
  corral agent --server http://127.0.0.1:8420 --simulate-gpus 8xA100-80GB --name sim-1
  corral agent --server http://gpu-head:8420 --user-map-file /etc/corral/users
""",
)
@click.option(
    "--server", required=True, type=SERVER_URL, metavar="URL", help="The Corral server's URL."
)
@click.option(
    "--join-token",
    envvar=JOIN_TOKEN_ENV,
    show_envvar=True,
    metavar="TOKEN",
    help="From `corral join-token`; needed only the first time (the node token it is "
    "traded for is kept in the state directory).",
)
@click.option("--name", type=NODE_NAME, help="Node name. [default: this host's name]")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Node token, job directories and output. [default: $CORRAL_HOME/agent/NAME]",
)
@click.option(
    "--simulate-gpus",
    metavar="PROFILE",
    help="Pretend to have GPUs, e.g. 8xA100-80GB or 4xRTX4090, with an optional MIG "
    "layout: 8xH100-80GB,mig=0-1:1g.10gb*7/2:3g.40gb*2 (for demos and tests; they are "
    "reported as simulated). Without it, real GPUs are found through NVML.",
)
@click.option(
    "--user-map",
    type=KEY_VALUE,
    multiple=True,
    metavar="USER=ACCOUNT",
    help="Run USER's jobs as Unix ACCOUNT when the agent is root ('*' = everyone; repeatable).",
)
@click.option(
    "--user-map-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="File of 'corral_user unix_account' lines ('*' = everyone, '#' comments).",
)
@click.option(
    "--allow-root-jobs",
    is_flag=True,
    help="Allow jobs to run as root when the user map says so (refused by default).",
)
@click.option(
    "--no-cgroups",
    is_flag=True,
    help="Run process jobs without cgroups, so without their CPU and memory limits (a "
    "root agent enforces them where the node has cgroup v1 or v2 controllers).",
)
@click.option(
    "--pool",
    type=POOL_NAME,
    default=_AGENT_DEFAULTS.pool,
    show_default=True,
    help="Node pool this node belongs to (jobs and projects can be pinned to pools).",
)
@click.option(
    "--address",
    metavar="HOST",
    help="Address other nodes reach this one at: a gang's MASTER_ADDR when its first "
    "worker runs here (default: the host name). Give the address of the network "
    "distributed training should use.",
)
@click.option(
    "--metrics-interval",
    type=DURATION,
    metavar="DURATION",
    default=_AGENT_DEFAULTS.metrics_interval,
    show_default=format_duration(_AGENT_DEFAULTS.metrics_interval),
    help="Time between monitoring samples (GPUs, processes, host); 0 turns monitoring off.",
)
@click.option(
    "--disk-usage",
    "disk_usage_paths",
    multiple=True,
    metavar="PATH",
    help="Report per-user disk usage of PATH (e.g. /home; repeatable), scanned at low "
    "priority every --disk-usage-period.",
)
@click.option(
    "--disk-usage-period",
    type=DURATION,
    metavar="DURATION",
    default=_AGENT_DEFAULTS.disk_usage_period,
    show_default=format_duration(_AGENT_DEFAULTS.disk_usage_period),
    help="Time between disk-usage scans.",
)
@click.option(
    "--container-user-pattern",
    metavar="REGEX",
    help="How to find the user in the name of a Docker container Corral did not start: "
    "a regex with a (?P<user>...) group, matched at the start of the name. "
    "[default: '<user>_<anything>']",
)
@click.option(
    "--docker-host",
    metavar="URL",
    help="The Docker engine container jobs run with, e.g. unix:///var/run/docker.sock. "
    "[default: $DOCKER_HOST, else the default socket]",
)
@click.option(
    "--no-docker",
    is_flag=True,
    help="Run no container jobs here, even where Docker answers (they are then not "
    "placed on this node).",
)
@click.option(
    "--docker-gpu-requests",
    type=click.Choice(["auto", "always", "never"]),
    default=_AGENT_DEFAULTS.docker_gpu_requests,
    show_default=True,
    help="When a container gets its GPUs as an NVIDIA device request (needs the NVIDIA "
    "container toolkit): auto = when the GPUs are real, not simulated.",
)
@click.option(
    "--mps",
    type=click.Choice(["off", "external", "start"]),
    default=_AGENT_DEFAULTS.mps,
    show_default=True,
    help="CUDA MPS for jobs on part of a shared GPU (--gpus 0.5, --gpu-memory): they get "
    "MPS's memory and SM limits, which the driver enforces. external = the node runs an "
    "MPS control daemon at --mps-directory; start = the agent starts one per GPU (and "
    "stops them when it stops with no jobs left). See docs/gpu-sharing.md.",
)
@click.option(
    "--mps-directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="The MPS pipe directory (external), or where the agent's per-GPU MPS daemons "
    "keep theirs (start). [default: /tmp/nvidia-mps (external); /run/corral-mps as "
    "root, else STATE_DIR/mps (start)]",
)
@click.option(
    "--grace-period",
    type=DURATION,
    default=_AGENT_DEFAULTS.grace_seconds,
    show_default=format_duration(_AGENT_DEFAULTS.grace_seconds),
    metavar="DURATION",
    help="Default time between SIGTERM and SIGKILL when a job is stopped.",
)
@click.pass_context
def agent(
    ctx: click.Context,
    server: str,
    join_token: str | None,
    name: str | None,
    state_dir: Path | None,
    simulate_gpus: str | None,
    user_map: tuple[tuple[str, str], ...],
    user_map_file: Path | None,
    allow_root_jobs: bool,
    no_cgroups: bool,
    pool: str,
    address: str | None,
    metrics_interval: float,
    disk_usage_paths: tuple[str, ...],
    disk_usage_period: float,
    container_user_pattern: str | None,
    docker_host: str | None,
    no_docker: bool,
    docker_gpu_requests: str,
    mps: str,
    mps_directory: Path | None,
    grace_period: float,
) -> None:
    """Run a Corral agent, making this machine a node of the cluster.

    The agent connects out to the server (no inbound port is needed), reports the
    machine's GPUs and health, and starts and stops the jobs the server assigns. When
    it runs as root, each user's jobs run as their own Unix account (see --user-map);
    otherwise they run as the agent's account. Container jobs (--image) run in the
    node's Docker engine, when one answers.
    """
    if user_map and user_map_file:
        raise click.BadOptionUsage("user_map", "use --user-map or --user-map-file, not both")
    mapping = read_user_map_file(user_map_file) if user_map_file else {}
    for user, account in user_map:
        problem = check_user_map_entry(user, account)
        if problem:
            raise click.BadParameter(problem, param_hint="--user-map")
        mapping[user] = account
    if container_user_pattern is not None:
        try:
            if "user" not in re.compile(container_user_pattern).groupindex:
                raise click.BadParameter(
                    "needs a (?P<user>...) group", param_hint="--container-user-pattern"
                )
        except re.error as exc:
            raise click.BadParameter(
                f"not a regular expression: {exc}", param_hint="--container-user-pattern"
            ) from None
    config = AgentConfig(
        server=server,
        join_token=join_token,
        name=name,
        state_dir=state_dir,
        simulate_gpus=simulate_gpus,
        user_map=mapping,
        allow_root_jobs=allow_root_jobs,
        cgroups=not no_cgroups,
        pool=pool,
        address=address,
        metrics_interval=metrics_interval,
        disk_usage_paths=list(disk_usage_paths),
        disk_usage_period=disk_usage_period,
        container_user_pattern=container_user_pattern,
        docker=not no_docker,
        docker_host=docker_host,
        docker_gpu_requests=docker_gpu_requests,
        mps=mps,
        mps_directory=mps_directory,
        grace_seconds=grace_period,
    )
    from corral.agent.agent import run_agent  # here, not at the top: see the module docstring

    ctx.exit(run_agent(config))


COMMANDS: Sequence[click.Command] = (server, agent)
