"""What every service needs, in one object: settings, database, clock, signals, logs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from corral.core.clock import Clock, SystemClock
from corral.scheduler import ProjectShare
from corral.server.database import ServerDatabase
from corral.server.logstore import LogStore
from corral.server.metrics.hub import MetricsHub
from corral.server.metrics.store import MetricsStore, Retention
from corral.server.settings import ServerSettings
from corral.server.signals import Signals
from corral.server.tunnels import TunnelHub


@dataclass
class SchedulingView:
    """What the last scheduling cycle concluded, for `project list` and `corral queue`.

    Derived state, recomputed every cycle; never stored.
    """

    shares: dict[str, ProjectShare] = field(default_factory=dict)
    queue: list[int] = field(default_factory=list)


@dataclass
class ServerContext:
    settings: ServerSettings
    db: ServerDatabase
    logs: LogStore
    metrics: MetricsHub
    clock: Clock = field(default_factory=SystemClock)
    signals: Signals = field(default_factory=Signals)
    started_at: datetime | None = None
    scheduling: SchedulingView = field(default_factory=SchedulingView)
    tunnels: TunnelHub = field(default_factory=TunnelHub)  # interactive sessions

    @classmethod
    def create(cls, settings: ServerSettings, clock: Clock | None = None) -> ServerContext:
        data_dir = settings.resolved_data_dir()
        data_dir.mkdir(parents=True, exist_ok=True)
        clock = clock or SystemClock()
        return cls(
            settings=settings,
            db=ServerDatabase(settings.resolved_database_url()),
            logs=LogStore(data_dir / "logs", settings.log_max_bytes),
            metrics=MetricsHub(
                MetricsStore(
                    settings.resolved_metrics_database_url(),
                    Retention(
                        raw=settings.metrics_raw_retention,
                        minute=settings.metrics_minute_retention,
                        hour=settings.metrics_hour_retention,
                    ),
                )
            ),
            clock=clock,
            started_at=clock.now(),
        )

    def dispose(self) -> None:
        """Close every database connection pool."""
        self.db.dispose()
        self.metrics.store.dispose()
