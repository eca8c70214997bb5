"""`corral server`: migrate, bootstrap, serve."""

from __future__ import annotations

import gc
import logging
import sys
from types import FrameType

import uvicorn

from corral.server.app import create_app
from corral.server.context import ServerContext
from corral.server.services.bootstrap import bootstrap
from corral.server.settings import ServerSettings
from corral.store.migrate import upgrade


def _say(line: str) -> None:
    print(f"corral server: {line}", file=sys.stderr, flush=True)


def prepare(settings: ServerSettings) -> ServerContext:
    """Create the context, apply migrations, and bootstrap a new installation."""
    ctx = ServerContext.create(settings)
    url = ctx.db.url
    shown = url.split("@")[-1] if "@" in url else url
    _say(f"database {shown}")
    upgrade(url)
    result = bootstrap(ctx)
    if result.admin_token:
        _say("first start: created user 'admin' and project 'default'")
        print(
            f"\n  Admin token (saved in {result.admin_token_file}):\n    {result.admin_token}\n"
            f"\n  Log in:     corral login --server {settings.url} --token {result.admin_token}"
            f"\n  Dashboard:  {settings.url}/ (log in with the admin token)"
            f"\n  Join nodes: corral agent --server {settings.url} --join-token "
            f"{result.join_token}\n",
            file=sys.stderr,
            flush=True,
        )
    return ctx


def serve(settings: ServerSettings) -> None:
    """Run the server in the foreground until interrupted."""
    logging.basicConfig(level=logging.INFO, format="corral server: %(levelname)s %(message)s")
    ctx = prepare(settings)
    _say(
        f"listening on {settings.url} (dashboard at {settings.url}/, API at "
        f"{settings.url}/api/v1, API docs at {settings.url}/docs)"
    )
    app = create_app(ctx)
    # Everything loaded so far (modules, the app, SQLAlchemy's mappers) lives as long as
    # the server: keep it out of the garbage collector's full collections, which
    # otherwise walk all of it and hold up every request for tens of milliseconds.
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )
    try:
        _Server(config, ctx).run()
    finally:
        ctx.dispose()


class _Server(uvicorn.Server):
    """uvicorn's server, which also releases the agents' long polls when told to stop:
    its graceful shutdown waits for open requests, and a held sync or tunnel poll would
    otherwise be cut off (with a traceback) only when that wait runs out."""

    def __init__(self, config: uvicorn.Config, ctx: ServerContext) -> None:
        super().__init__(config)
        self._ctx = ctx

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._ctx.signals.server_stopping(then=self._ctx.tunnels.release_polls)
        super().handle_exit(sig, frame)
