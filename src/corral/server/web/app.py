"""Mounts the dashboard on the FastAPI app: static files, pages, the login redirect."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from corral.server.web.core import STATIC_DIR, LoginRequired
from corral.server.web.pages import jobs, me, nodes, overview, projects, session

PAGES = (session.router, overview.router, jobs.router, nodes.router, projects.router, me.router)


def install_web(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for router in PAGES:
        app.include_router(router, include_in_schema=False)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        if request.headers.get("hx-request"):
            # An htmx refresh after the session ended: reload the whole page to log in.
            return Response(status_code=204, headers={"HX-Redirect": "/login"})
        return RedirectResponse(f"/login?next={quote(exc.next_url, safe='/')}", status_code=303)
