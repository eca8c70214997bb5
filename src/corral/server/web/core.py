"""What every page needs: templates, the signed-in user, helpers for numbers and times."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from corral import __version__
from corral.core.errors import Forbidden, Unauthorized
from corral.core.quantities import format_bytes, format_duration
from corral.core.states import Role
from corral.server.api.deps import SESSION_COOKIE, CtxDep
from corral.server.services import auth
from corral.server.services.accounts import Caller

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"


def _age(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "-"
    now = now or datetime.now(UTC)
    return format_duration(max(0.0, (now - moment).total_seconds())) + " ago"


def _gpus(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if value == int(value) else f"{value:.2f}".rstrip("0")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(
    bytes=format_bytes,
    duration=lambda s: "-" if s is None else format_duration(s),
    age=_age,
    gpus=_gpus,
    percent=_percent,
    urlquote=lambda s: quote(str(s), safe=""),
)
templates.globals.update(version=__version__)


class LoginRequired(Exception):
    """Raised by page dependencies; the app turns it into a redirect to the login page."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def page_caller(ctx: CtxDep, request: Request) -> Caller:
    """The signed-in user of a page (from the session cookie), else off to /login."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        raise LoginRequired(str(request.url.path))
    try:
        with ctx.db.read() as s:
            user_id, name, role = auth.caller_for_token(s, token)
    except Unauthorized:
        raise LoginRequired(str(request.url.path)) from None
    return Caller(id=user_id, name=name, role=Role(role))


PageCaller = Annotated[Caller, Depends(page_caller)]


def admin_only(caller: Caller) -> None:
    if not caller.is_admin:
        raise Forbidden("this page is for admins")


def render(request: Request, template: str, caller: Caller | None, **context: Any) -> HTMLResponse:
    """A page (or, for htmx requests of a fragment template, just that fragment)."""
    html = templates.get_template(template).render(
        request=request,
        caller=caller,
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html)
