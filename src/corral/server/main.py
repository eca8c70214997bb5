"""`corral server`: migrate, bootstrap, serve."""

from __future__ import annotations

import gc
import logging
import sys

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
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=3,
        )
    finally:
        ctx.dispose()
