"""Log in (a token becomes an HttpOnly session cookie) and log out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from corral.core.errors import Unauthorized
from corral.server.api.deps import SESSION_COOKIE, CtxDep
from corral.server.services import auth
from corral.server.web.core import render

router = APIRouter()

SESSION_SECONDS = 14 * 86400


def _safe_next(next_url: str | None) -> str:
    """Only paths of this site: never redirect a fresh login elsewhere."""
    if next_url and next_url.startswith("/") and not next_url.startswith("//"):
        return next_url
    return "/"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "login.html", None, next_url=_safe_next(next), error=None)


@router.post("/login")
def login(
    ctx: CtxDep,
    request: Request,
    token: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    token = token.strip()
    try:
        with ctx.db.read() as s:
            auth.caller_for_token(s, token)
    except Unauthorized:
        page = render(
            request,
            "login.html",
            None,
            next_url=_safe_next(next),
            error="That token is not valid (a user token starts with crl_).",
        )
        page.status_code = 401
        return page
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
