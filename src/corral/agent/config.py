"""The agent's settings (one object, filled from `corral agent` flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class AgentConfig:
    """Everything `corral agent` can be told.

    - ``server``: base URL of the server, e.g. ``http://127.0.0.1:8420``.
    - ``join_token``: presented once to register; the node token it yields is kept in
      ``state_dir / "node-token"`` and used from then on (also after restarts).
    - ``name``: node name (default: the host name, cleaned).
    - ``state_dir``: where job directories, output files and the node token live
      (default ``$CORRAL_HOME/agent/<name>``).
    - ``simulate_gpus``: a profile such as ``8xA100-80GB``; None means real GPUs via NVML.
    - ``user_map``: corral user → Unix account overrides (``"*"`` matches everyone).
    - ``allow_root_jobs``: let jobs run as root when the mapping resolves to root.
    - ``cgroups``: give process jobs their CPU and memory limits in cgroups, where the
      node has them and the agent is root; False: never (``--no-cgroups``).
    - ``pool``: the node pool this node belongs to.
    - ``address``: where other nodes reach this one (gangs' MASTER_ADDR); None: the
      host name.
    - ``metrics_interval``: seconds between monitoring samples (0: no monitoring);
      ``metrics_push``: seconds between batches sent to the server.
    - ``disk_usage_paths``: paths whose per-user disk usage is scanned (e.g. /home),
      every ``disk_usage_period`` seconds, at low priority.
    - ``container_user_pattern``: regex with a ``user`` group matched at the start of a
      Docker container's name, to name the user of containers Corral did not start.
    - ``docker``: run container jobs when a Docker engine answers at ``docker_host``
      (None: ``$DOCKER_HOST``, else ``unix:///var/run/docker.sock``); False: never.
      ``docker_gpu_requests``: when containers get a GPU device request (``auto``: when
      the GPUs are real; see `corral.agent.runtime.docker`).
    - ``mps``: CUDA MPS for jobs on shared GPUs: ``off``, ``external`` (the node runs
      a control daemon at ``mps_directory``) or ``start`` (the agent starts one per
      GPU under ``mps_directory``); None directory: see `corral.agent.mps`.
    - ``grace_seconds``: default time between SIGTERM and SIGKILL.
    - ``log_flush_seconds``: how often job output is shipped to the server.
    """

    server: str
    join_token: str | None = None
    name: str | None = None
    state_dir: Path | None = None
    simulate_gpus: str | None = None
    user_map: dict[str, str] = field(default_factory=dict)
    allow_root_jobs: bool = False
    cgroups: bool = True
    pool: str = "default"
    address: str | None = None
    metrics_interval: float = 1.0
    metrics_push: float = 2.0
    disk_usage_paths: list[str] = field(default_factory=list)
    disk_usage_period: float = 3600.0
    container_user_pattern: str | None = None
    docker: bool = True
    docker_host: str | None = None
    docker_gpu_requests: str = "auto"
    mps: str = "off"
    mps_directory: Path | None = None
    grace_seconds: float = 10.0
    log_flush_seconds: float = 0.5
