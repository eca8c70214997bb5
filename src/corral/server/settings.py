"""The server's settings: one object, filled from flags and environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corral.paths import DEFAULT_PORT, server_dir


@dataclass
class ServerSettings:
    """Everything `corral server` can be told. Times are in seconds.

    - ``data_dir``: SQLite database, job logs, admin-token and join-token files.
    - ``database_url``: SQLAlchemy URL; default SQLite (WAL) in ``data_dir``;
      ``postgresql+psycopg://user@host/db`` for PostgreSQL (env ``CORRAL_DATABASE_URL``).
    - ``sync_wait``: how long an agent's sync request is held when nothing changed
      (long poll); it is also the agent's heartbeat period.
    - ``node_not_ready_after`` / ``node_down_after``: heartbeat silence before a node is
      marked not ready (no new jobs) / down (its jobs are lost).
    - ``default_grace``: SIGTERM→SIGKILL time for jobs that do not set their own.
    - ``log_max_bytes``: per job attempt; output beyond it is dropped with a marker.
    - ``scheduler_interval``: the scheduler runs at least this often, and soon when
      something changes: after ``scheduler_debounce`` (which batches a burst) when a
      job is submitted, at once when a job ends and frees its devices.
    - ``usage_half_life``: when set, projects' GPU usage decays with this half-life and
      breaks ties in the fair-share order (Slurm's idea); None = off.
    - ``metrics_database_url``: where monitoring history goes; default
      ``<data_dir>/metrics.db`` with SQLite, the main database with PostgreSQL.
    - ``metrics_raw_retention`` / ``metrics_minute_retention`` /
      ``metrics_hour_retention``: how long raw samples, 1-minute and 1-hour rollups are
      kept.
    - ``metrics_require_token``: ``/metrics`` (Prometheus) needs a token, like the API;
      off by default, as node_exporter's and dcgm-exporter's are.
    - ``allow_host_path_volumes``: container jobs may mount any host path
      (``--volume /host/path:/path``), not only the volumes an admin defined.
    - ``allow_root_containers``: container jobs may run as their image's user (often
      root, ``--root``) instead of their owner's UID/GID.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path | None = None
    database_url: str | None = None
    sync_wait: float = 5.0
    node_not_ready_after: float = 15.0
    node_down_after: float = 60.0
    default_grace: float = 10.0
    log_max_bytes: int = 64 * 1024 * 1024
    scheduler_interval: float = 2.0
    scheduler_debounce: float = 0.02
    health_interval: float = 1.0
    usage_half_life: float | None = None
    metrics_database_url: str | None = None
    metrics_raw_retention: float = 3 * 3600.0
    metrics_minute_retention: float = 8 * 86400.0
    metrics_hour_retention: float = 400 * 86400.0
    metrics_maintenance_interval: float = 60.0
    usage_history_interval: float = 15.0
    metrics_require_token: bool = False
    allow_host_path_volumes: bool = False
    allow_root_containers: bool = False

    def resolved_data_dir(self) -> Path:
        return (self.data_dir or server_dir()).expanduser().resolve()

    def resolved_database_url(self) -> str:
        url = self.database_url or os.environ.get("CORRAL_DATABASE_URL")
        if url:
            return url
        return f"sqlite:///{self.resolved_data_dir() / 'corral.db'}"

    def heartbeat_period(self) -> float:
        """How long a sync is held (and so how often a quiet node heartbeats): the
        configured ``sync_wait``, but at most a third of ``node_not_ready_after`` so that
        a healthy node is never late."""
        return min(self.sync_wait, self.node_not_ready_after / 3)

    def resolved_metrics_database_url(self) -> str:
        if self.metrics_database_url:
            return self.metrics_database_url
        main = self.resolved_database_url()
        if main.startswith("sqlite"):
            if ":memory:" in main or main in ("sqlite://", "sqlite:///"):
                return "sqlite://"
            return f"sqlite:///{self.resolved_data_dir() / 'metrics.db'}"
        return main

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
