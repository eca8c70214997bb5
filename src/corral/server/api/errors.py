"""Domain errors → HTTP, in one place. Every error body is `schemas.ErrorResponse`."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.core.errors import CorralError
from corral.core.names import NAME_RE
from corral.core.schemas import MAX_REQUEST_BYTES

LOG_UPLOAD_MAX_BYTES = 2 * 1024 * 1024


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "field": field}},
        headers=headers,
    )


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def _validation_message(err: dict[str, Any]) -> tuple[str, str]:
    field = _field_of(tuple(err.get("loc", ())))
    kind = err.get("type", "")
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NAME_RE.pattern:
        return field, (
            f"{field}: {err.get('input')!r} is not a valid name: use 1-63 lower-case "
            "letters, digits and '-', starting and ending with a letter or digit"
        )
    if kind == "extra_forbidden":
        return field, f"{field}: unknown field"
    if kind == "json_invalid":
        return "body", "the request body is not valid JSON"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    named = _NAMED.match(msg)
    if field == "body" and named:
        # A check across fields names the field it blames ("workers: a gang's …").
        return named.group(1), msg
    return field, f"{field}: {msg}"


_NAMED = re.compile(r"^([a-z_]+): ")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CorralError)
    async def _corral(_: Request, exc: CorralError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
        return error_response(exc.http_status, exc.code, exc.message, exc.field, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        field, message = _validation_message(errors[0]) if errors else ("body", "invalid")
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return error_response(422, "invalid", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "invalid", 401: "unauthorized"}.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail))


class BodySizeLimit:
    """Refuse request bodies over the limit before they are read into memory.

    Checks Content-Length up front, and counts chunked bodies as they arrive.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        # The port URLs stream bodies through to the job (a notebook saved, a file
        # uploaded to it) and never hold them in memory: no limit there.
        if scope["type"] != "http" or _PORT_URL.match(path):
            await self.app(scope, receive, send)
            return
        limit = LOG_UPLOAD_MAX_BYTES if path.endswith("/log") else MAX_REQUEST_BYTES
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._refuse(send, limit)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        response = error_response(
            413, "too_large", f"the request body is larger than {limit // 1024} KiB"
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": response.body})


_PORT_URL = re.compile(r"^/jobs/\d+/ports/\d+/")


class _TooLarge(Exception):
    pass
