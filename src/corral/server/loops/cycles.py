"""The scheduler loop and the node liveness loop."""

from __future__ import annotations

import asyncio
import logging

from corral.scheduler import FairSharePolicy, Policy
from corral.server.context import ServerContext
from corral.server.loops.base import LoopService
from corral.server.services import monitoring
from corral.server.services import nodes as node_service
from corral.server.services.limits import stop_overdue_interactive
from corral.server.services.scheduling import run_cycle

log = logging.getLogger("corral.server")


class SchedulerLoop(LoopService):
    """Runs a scheduling cycle every interval, and at once when woken."""

    name = "scheduler"

    def __init__(self, ctx: ServerContext, policy: Policy | None = None) -> None:
        super().__init__(
            ctx.settings.scheduler_interval,
            ctx.signals.scheduler_wakeup,
            ctx.settings.scheduler_debounce,
        )
        self.ctx = ctx
        self.policy = policy or FairSharePolicy()

    def cycle(self) -> None:
        with self.ctx.db.tx() as s:
            result = run_cycle(
                s, self.policy, self.ctx.clock.now(), self.ctx.settings.usage_half_life
            )
        self.ctx.scheduling.shares = result.shares
        self.ctx.scheduling.queue = result.queue
        if result.changed_nodes:
            self.ctx.signals.nodes_changed(result.changed_nodes)
            log.debug("scheduler: bound %d job(s), %d pending", result.bound, result.pending)

    async def run_once(self) -> None:
        await asyncio.to_thread(self.cycle)


class NodeHealthLoop(LoopService):
    """Marks nodes not_ready / down when their heartbeats stop, and enforces time limits."""

    name = "node-health"

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx.settings.health_interval)
        self.ctx = ctx

    def check(self) -> None:
        settings = self.ctx.settings
        now = self.ctx.clock.now()
        with self.ctx.db.tx() as s:
            freed, changed = node_service.check_liveness(
                s,
                now,
                not_ready_after=settings.node_not_ready_after,
                down_after=settings.node_down_after,
                server_started_at=self.ctx.started_at or now,
            )
            changed |= stop_overdue_interactive(s, now)
        if changed:
            self.ctx.signals.nodes_changed(changed)
        if freed:
            self.ctx.signals.wake_scheduler()

    async def run_once(self) -> None:
        await asyncio.to_thread(self.check)


class MetricsMaintenanceLoop(LoopService):
    """Rolls monitoring samples up into minutes and hours and drops what is past retention."""

    name = "metrics-maintenance"

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx.settings.metrics_maintenance_interval)
        self.ctx = ctx

    def maintain(self) -> None:
        now = self.ctx.clock.now().timestamp()
        store = self.ctx.metrics.store
        store.roll_up(now)
        store.expire(now)

    async def run_once(self) -> None:
        await asyncio.to_thread(self.maintain)


class UsageHistoryLoop(LoopService):
    """Records, every ``usage_history_interval``, each project's quota, fair share,
    allocated GPUs and pending jobs, each user's GPUs held, and the cluster's GPUs and
    mean utilization: the history behind "GPUs per project over time" and the
    overview's utilization chart."""

    name = "usage-history"

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx.settings.usage_history_interval)
        self.ctx = ctx

    def record(self) -> None:
        t = int(self.ctx.clock.now().timestamp())
        with self.ctx.db.read() as s:
            projects, users = monitoring.usage_rows(s, dict(self.ctx.scheduling.shares), t)
            now = monitoring.cluster_now(s, self.ctx.metrics, self.ctx.clock.now())
            summary = monitoring.summarize(s, now)
        self.ctx.metrics.store.add("project", projects)
        self.ctx.metrics.store.add("user", users)
        self.ctx.metrics.store.add("cluster", [monitoring.cluster_row(summary, t)])

    async def run_once(self) -> None:
        await asyncio.to_thread(self.record)
