"""The FastAPI application and its lifespan (background loops start and stop with it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from corral import __version__
from corral.client import API_PREFIX
from corral.core.schemas import ErrorResponse
from corral.server.api import accounts, agent, interactive, jobs, metrics, nodes, ports
from corral.server.api.errors import BodySizeLimit, install_error_handlers
from corral.server.context import ServerContext
from corral.server.loops.cycles import (
    MetricsMaintenanceLoop,
    NodeHealthLoop,
    SchedulerLoop,
    UsageHistoryLoop,
)
from corral.server.web.app import install_web

log = logging.getLogger("corral.server")


def create_app(ctx: ServerContext, *, run_loops: bool = True) -> FastAPI:
    """Build the app around ``ctx``. Tests may pass ``run_loops=False`` and drive cycles."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.signals.attach(asyncio.get_running_loop())
        loops = (
            [
                SchedulerLoop(ctx),
                NodeHealthLoop(ctx),
                MetricsMaintenanceLoop(ctx),
                UsageHistoryLoop(ctx),
            ]
            if run_loops
            else []
        )
        tasks = [asyncio.create_task(loop.run(), name=loop.name) for loop in loops]
        try:
            yield
        finally:
            for loop in loops:
                loop.stop()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="Corral",
        version=__version__,
        description="Fair-share GPU cluster manager. Every call needs `Authorization: Bearer "
        "<token>` except /health.",
        lifespan=lifespan,
        responses={
            401: {"model": ErrorResponse},
            403: {"model": ErrorResponse},
            404: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
        },
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit)

    api = APIRouter(prefix=API_PREFIX)

    @api.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    for router in (
        accounts.router,
        jobs.router,
        nodes.router,
        agent.router,
        metrics.router,
        interactive.router,
    ):
        api.include_router(router)
    app.include_router(api)
    app.include_router(ports.router)  # /jobs/{id}/ports/{port}/…: jobs' web servers
    app.include_router(metrics.prometheus_router)  # at /metrics, where Prometheus looks
    install_web(app)  # the dashboard at /
    return app
